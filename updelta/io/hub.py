"""Checkpoint specs -> local folders: a local path, or a Hugging Face Hub id found in the local cache.

`locate(spec, download=False)` is the one place a checkpoint argument is turned into something `open_checkpoint`
reads (docs/inputs.md):

1. a path that exists (file or folder) is used as it is: a local path always wins over an id of the same name;
2. a URL (`s3://`, `gs://`, `hf://`, `https://`, ...) is returned unchanged (read remotely, `io.remote`);
3. otherwise `name`, `org/name` or `org/name@REV` (REV: a branch, a tag, a full or short commit hash, `refs/pr/N`)
   is looked up in the Hub cache with `huggingface_hub.snapshot_download(local_files_only=True)`, which applies
   the cache rules (`models--org--name/refs/REV` -> `snapshots/<commit>/`, files linked into `blobs/`). A short
   commit hash (4 to 39 hex digits) that no `refs/` file names is matched against the cached snapshots
   (`huggingface_hub.scan_cache_dir`), as git would: it must name exactly one of them;
4. with `download=True` (`--download`), an id not in the cache is fetched with `snapshot_download` (weights of one
   format, shard indexes, config and tokenizer files, adapter files), unless offline mode is on (`HF_HUB_OFFLINE`).

Nothing here touches the network unless `download` is true. The cache folder and offline mode follow
huggingface_hub (HF_HUB_CACHE, else HF_HOME/hub; HF_HUB_OFFLINE), read from the environment when `locate` is
called, so a variable set after import counts.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from updelta.errors import CheckpointError

URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
SHORT_HASH_RE = re.compile(r"[0-9a-f]{4,39}")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# files fetched besides the weights: configs, indexes, tokenizer and adapter files (top level of the repo only)
SIDE_FILES = re.compile(r"[^/]*\.json|tokenizer[^/]*|[^/]*\.model|merges\.txt|vocab[^/]*|[^/]*\.tiktoken"
                        r"|chat_template[^/]*|README\.md")


def is_url(spec: str | os.PathLike) -> bool:
    """True for `scheme://...` specs (remote files), which are never local paths or Hub ids."""
    return isinstance(spec, str) and bool(URL_RE.match(spec))


def parse_id(spec: str) -> tuple[str, str | None] | None:
    """`org/name@REV` -> (repo id, REV or None); None when `spec` cannot be a Hub model id."""
    from huggingface_hub.errors import HFValidationError  # Hub ids only
    from huggingface_hub.utils import validate_repo_id  # Hub ids only

    repo, sep, rev = spec.partition("@")
    if sep and not rev:
        return None
    try:
        validate_repo_id(repo)
    except HFValidationError:
        return None
    return repo, (rev or None)


def hub_cache() -> Path:
    """The Hub cache folder by huggingface_hub's rule (HF_HUB_CACHE, else HUGGINGFACE_HUB_CACHE, else HF_HOME/hub),
    read from the environment now; the library's own value when none of them is set."""
    from huggingface_hub import constants  # Hub ids only

    env = os.environ
    if "HF_HUB_CACHE" in env or "HUGGINGFACE_HUB_CACHE" in env or "HF_HOME" in env or "XDG_CACHE_HOME" in env:
        home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                                  "huggingface")
        raw = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
        return Path(os.path.expandvars(os.path.expanduser(raw)))
    return Path(constants.HF_HUB_CACHE)


def offline() -> bool:
    """huggingface_hub's offline mode (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE), as the library or the environment
    now says."""
    from huggingface_hub import constants  # Hub ids only

    now = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return constants.is_offline_mode() or now.upper() in constants.ENV_VARS_TRUE_VALUES


def _fetch_hint(repo: str, rev: str | None) -> str:
    return f"add --download to the updelta command, or run `hf download {repo}{f' --revision {rev}' if rev else ''}`"


def locate(spec: str | os.PathLike, download: bool = False) -> Path | str:
    """The local path (or URL) that checkpoint `spec` stands for; a one-line `CheckpointError` when there is none."""
    if is_url(spec):
        return str(spec)
    p = Path(spec)
    if p.exists():
        return p
    ident = None if p.suffix in WEIGHT_SUFFIXES else parse_id(str(spec))
    if ident is None:
        raise CheckpointError(f"{p}: no such file or folder; pass a Hugging Face model folder, a .safetensors file, "
                              f"a .bin/.pt state dict or a Hub id (org/name[@revision])")
    repo, rev = ident
    cache = hub_cache()
    found = cached_snapshot(repo, rev, cache)
    if found is not None and _has_weights(found):
        return found
    if not download:
        if found is not None:
            raise CheckpointError(f"{spec}: the cached snapshot {found} holds no weights (or links to missing blobs: "
                                  f"an interrupted download); {_fetch_hint(repo, rev)}")
        raise CheckpointError(f"{spec}: no such file or folder ({p.absolute()}), and {repo}"
                              f"{f' at revision {rev}' if rev else ''} is not in the Hugging Face cache {cache}; "
                              f"{_fetch_hint(repo, rev)}")
    return fetch(repo, rev, cache)


def cached_snapshot(repo: str, rev: str | None, cache: Path) -> Path | None:
    """The cached snapshot folder of `repo` at `rev` (default main), or None (offline: never touches the network)."""
    from huggingface_hub import snapshot_download  # Hub ids only
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError  # Hub ids only

    def lookup(revision: str | None) -> Path | None:
        try:
            return Path(snapshot_download(repo, revision=revision, cache_dir=cache, local_files_only=True))
        except (LocalEntryNotFoundError, HFValidationError, OSError):
            return None

    found = lookup(rev)
    if found is None and rev is not None and SHORT_HASH_RE.fullmatch(rev):
        full = _expand_short_hash(repo, rev, cache)
        found = lookup(full) if full is not None else None
    return found


def _expand_short_hash(repo: str, prefix: str, cache: Path) -> str | None:
    """The one cached commit of `repo` whose hash starts with `prefix` (None if none; an error if several)."""
    from huggingface_hub import scan_cache_dir  # Hub ids only
    from huggingface_hub.errors import CacheNotFound  # Hub ids only

    try:
        info = scan_cache_dir(cache)
    except CacheNotFound:
        return None
    hits = sorted(r.commit_hash for repo_info in info.repos if repo_info.repo_id == repo
                  and repo_info.repo_type == "model" for r in repo_info.revisions if r.commit_hash.startswith(prefix))
    if len(hits) > 1:
        raise CheckpointError(f"{repo}@{prefix}: the short hash matches {len(hits)} cached commits ("
                              f"{', '.join(h[:12] for h in hits[:4])}); give more digits of the commit hash")
    return hits[0] if hits else None


def _has_weights(folder: Path) -> bool:
    """True when the snapshot holds a weights file or an adapter whose links resolve (a blob exists)."""
    return any(q.is_file() and (q.suffix in WEIGHT_SUFFIXES or q.name == "adapter_config.json")
               for q in folder.iterdir())


def download_files(repo_files: list[str]) -> list[str]:
    """The files of a repo that `--download` fetches: top-level weights of one format (safetensors when there are
    any, else .bin/.pt), their indexes, config, tokenizer and adapter files. Never subfolders (duplicate
    `original/` weights, ONNX exports) nor optimizer or training state."""
    top = [f for f in repo_files if "/" not in f]
    st = [f for f in top if f.endswith(".safetensors")]
    weights = st or [f for f in top if f.endswith(WEIGHT_SUFFIXES) and (f.startswith(("pytorch_model", "model",
                                                                                        "adapter_model")))]
    return sorted(set(weights) | {f for f in top if SIDE_FILES.fullmatch(f)})


def fetch(repo: str, rev: str | None, cache: Path) -> Path:
    """Download what `download_files` selects of `repo` at `rev` into the Hub cache; its snapshot folder."""
    if offline():
        raise CheckpointError(f"{repo}: --download asked for, but Hugging Face offline mode is on (HF_HUB_OFFLINE); "
                              f"unset HF_HUB_OFFLINE, or fetch it where the Hub is reachable (`hf download {repo}`) "
                              f"into the cache {cache}")
    from huggingface_hub import HfApi, snapshot_download  # Hub ids only

    try:
        files = download_files(HfApi().list_repo_files(repo, revision=rev))
        if not any(f.endswith(WEIGHT_SUFFIXES) for f in files):
            raise CheckpointError(f"{repo}: the Hub repo holds no top-level weights (.safetensors, .bin, .pt); "
                                  f"pass a checkpoint folder instead")
        folder = Path(snapshot_download(repo, revision=rev, cache_dir=cache, allow_patterns=files))
    except CheckpointError:
        raise
    except Exception as e:  # network, auth, missing repo or revision: the library's first line says which
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{repo}: --download failed ({type(e).__name__}: {first[:200]})") from None
    return folder
