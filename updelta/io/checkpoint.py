"""Resolve a checkpoint path into named tensors that can be read block by block.

Accepted layouts:
- a Hugging Face model folder: `model.safetensors`; sharded `*.safetensors` with
  `model.safetensors.index.json`; `pytorch_model.bin`, or sharded `.bin` with
  `pytorch_model.bin.index.json`; a folder holding only `*.safetensors` files;
- a single `.safetensors` file; a single `.bin`/`.pt`/`.pth` state dict.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CheckpointError
from .safetensors_file import SafetensorsFile
from .torch_file import TorchFile

TORCH_SUFFIXES = (".bin", ".pt", ".pth")
FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16")
# Low-precision formats that store quantized weights: never measured as if they were plain numbers (a float8 weight
# means nothing without its block scales), refused by name when a compared tensor has one.
QUANTIZED_DTYPES = ("float8_e4m3fn", "float8_e5m2", "float8_e8m0fnu", "float8_e4m3fnuz", "float8_e5m2fnuz",
                    "float4_e2m1", "float4_e2m1fn_x2", "float6_e2m3", "float6_e3m2")


@dataclass(frozen=True)
class TensorRef:
    """One tensor of a checkpoint: where it lives, its storage dtype and shape."""

    name: str
    dtype: str  # torch name without prefix: "bfloat16"
    shape: tuple[int, ...]
    file: object  # SafetensorsFile | TorchFile

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    @property
    def is_quantized(self) -> bool:
        return self.dtype in QUANTIZED_DTYPES

    @property
    def itemsize(self) -> int:
        return {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}.get(self.dtype, 1)

    def read(self, start: int, count: int, out: np.ndarray | None = None) -> np.ndarray:
        """Elements [start, start+count) of the flattened tensor, raw storage (bf16 as uint16)."""
        return self.file.read(self.name, start, count, out)


class Checkpoint:
    """The tensors of one checkpoint, with its identity (path, format, files, dtypes)."""

    def __init__(self, path: Path, fmt: str, files: list, config: dict, weight_map: dict[str, str] | None = None,
                 index: Path | None = None):
        """`weight_map` (tensor -> shard file name, from an index) restricts the tensors to those it names; every
        one must be in the shard it names. Shard tensors it does not name are listed in `unindexed`."""
        self.path = path
        self.format = fmt
        self.files = files
        self.config = config
        self.tensors: dict[str, TensorRef] = {}
        self.unindexed: list[str] = []
        for f in files:
            for name in _names(f):
                if name in self.tensors:
                    raise CheckpointError(f"{f.path}: tensor {name} is also in {self.tensors[name].file.path}; "
                                          f"a checkpoint must hold each tensor once")
                if weight_map is not None and weight_map.get(name) != f.path.name:
                    if name not in weight_map:
                        self.unindexed.append(f"{name} ({f.path.name})")
                        continue
                    raise CheckpointError(f"{index}: names {weight_map[name]} for tensor {name}, but it is in "
                                          f"{f.path.name}; re-save the checkpoint or fix the index")
                self.tensors[name] = TensorRef(name, f.dtype_name(name), tuple(f.shape(name)), f)
        if weight_map is not None:
            missing = [n for n in weight_map if n not in self.tensors]
            if missing:
                raise CheckpointError(f"{index}: names tensor {missing[0]} in shard {weight_map[missing[0]]}, "
                                      f"which does not hold it ({len(missing)} such); re-save the checkpoint or "
                                      f"re-download the shards")

    def identity(self) -> dict:
        """Path, format, files with sizes, tensor count, dtypes and a cheap fingerprint."""
        dtypes: dict[str, int] = {}
        for t in self.tensors.values():
            dtypes[t.dtype] = dtypes.get(t.dtype, 0) + 1
        h = hashlib.sha256()
        for f in self.files:  # sampled content hash: name, size, first and last 64 KiB of every file
            h.update(f"{f.path.name}:{f.size}".encode())
            with open(f.path, "rb") as fh:
                h.update(fh.read(1 << 16))
                fh.seek(max(f.size - (1 << 16), 0))
                h.update(fh.read(1 << 16))
        return {
            "path": str(self.path),
            "format": self.format,
            "files": [{"name": f.path.name, "bytes": f.size} for f in self.files],
            "bytes": sum(f.size for f in self.files),
            "n_tensors": len(self.tensors),
            "n_params": int(sum(t.numel for t in self.tensors.values())),
            "dtypes": dtypes,
            "fingerprint": h.hexdigest()[:16],  # sampled, not a full hash
        }

    @property
    def tie_word_embeddings(self) -> bool | None:
        v = self.config.get("tie_word_embeddings")
        return v if isinstance(v, bool) else None

    def close(self) -> None:
        for f in self.files:
            f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _names(f) -> list[str]:
    return list(f.entries if isinstance(f, SafetensorsFile) else f.tensors)


MAX_JSON = 64 << 20  # an index or config.json larger than this is not one


def _read_json(path: Path) -> dict:
    def no_constants(name):
        raise ValueError(f"{name} is not JSON")
    try:
        if not path.is_file():
            raise CheckpointError(f"{path}: not a regular file; replace it with the JSON file itself")
        if path.stat().st_size > MAX_JSON:
            raise CheckpointError(f"{path}: {path.stat().st_size} bytes is too large for a JSON index or config")
        with open(path, encoding="utf-8") as fh:
            obj = json.loads(fh.read(), parse_constant=no_constants)
    except (OSError, ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{path}: not valid JSON ({e.__class__.__name__}); re-save the checkpoint") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return obj


def _read_config(folder: Path) -> dict:
    """config.json as a dict; {} when absent or unreadable (it only refines family detection and tying)."""
    try:
        return _read_json(folder / "config.json") if (folder / "config.json").exists() else {}
    except CheckpointError:
        return {}


def _open_file(path: Path):
    if path.suffix == ".safetensors":
        return SafetensorsFile(path)
    if path.suffix in TORCH_SUFFIXES:
        return TorchFile(path)
    raise CheckpointError(f"{path}: unknown weight file type; expected .safetensors, .bin, .pt or .pth")


def _plain_name(shard: str) -> bool:
    return (bool(shard) and shard not in (".", "..") and "/" not in shard and "\\" not in shard
            and "\0" not in shard and not os.path.isabs(shard))


def read_index(index: Path) -> dict[str, str]:
    """The `weight_map` of a shard index, checked: a non-empty map of tensor names to plain shard file names."""
    obj = _read_json(index)
    wm = obj.get("weight_map")
    if not isinstance(wm, dict) or not wm:
        raise CheckpointError(f"{index}: no weight_map (a non-empty map of tensor names to shard files); "
                              f"re-save the checkpoint or pass a single weights file")
    for name, shard in wm.items():
        if not isinstance(shard, str):
            raise CheckpointError(f"{index}: weight_map gives {shard!r} for tensor {name}, not a file name; "
                                  f"re-save the checkpoint")
        if not _plain_name(shard):
            raise CheckpointError(f"{index}: weight_map names shard {shard!r} for tensor {name}; shards must be "
                                  f"plain file names beside the index (no folders, no '..')")
    return wm


def _open_index(index: Path) -> tuple[list, dict[str, str]]:
    wm = read_index(index)
    files = []
    try:
        for shard in sorted(set(wm.values())):
            p = index.parent / shard
            if not p.exists():
                raise CheckpointError(f"{index}: names shard {shard}, which is missing; copy it beside the index")
            if not p.is_file():  # follows symlinks: a Hugging Face cache snapshot links into ../../blobs/
                raise CheckpointError(f"{index}: shard {shard} is not a regular file; replace it with the weights")
            files.append(_open_file(p))
    except BaseException:
        for f in files:
            f.close()
        raise
    return files, wm


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open the checkpoint at `path` (see module docstring for layouts). Reads headers only."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or folder; pass a Hugging Face model folder, "
                              f"a .safetensors file or a .bin/.pt state dict")
    config: dict = {}
    files: list
    wm = index = None
    if p.is_dir():
        config = _read_config(p)
        st_index, bin_index = p / "model.safetensors.index.json", p / "pytorch_model.bin.index.json"
        if st_index.exists():
            (files, wm), fmt, index = _open_index(st_index), "safetensors-sharded", st_index
        elif (p / "model.safetensors").exists():
            fmt, files = "safetensors", [SafetensorsFile(p / "model.safetensors")]
        elif bin_index.exists():
            (files, wm), fmt, index = _open_index(bin_index), "bin-sharded", bin_index
        elif (p / "pytorch_model.bin").exists():
            fmt, files = "bin", [TorchFile(p / "pytorch_model.bin")]
        else:
            st = sorted(q for q in p.glob("*.safetensors") if q.is_file())
            tf = sorted(q for q in p.iterdir() if q.suffix in TORCH_SUFFIXES and q.is_file())
            if st:
                fmt, files = ("safetensors" if len(st) == 1 else "safetensors-sharded"), _open_all(st)
            elif len(tf) == 1:
                fmt, files = "bin", [TorchFile(tf[0])]
            else:
                hint = _adapter_hint(p)
                raise CheckpointError(hint or f"{p}: no weights found (expected model.safetensors, "
                                              f"model.safetensors.index.json, pytorch_model.bin or its index)")
    elif p.is_file():
        files = [_open_file(p)]
        fmt = "safetensors" if p.suffix == ".safetensors" else "bin"
    else:
        raise CheckpointError(f"{p}: not a regular file or folder; pass a checkpoint folder or weights file")
    try:
        ck = Checkpoint(p, fmt, files, config, wm, index)
    except BaseException:
        for f in files:
            f.close()
        raise
    if not ck.tensors:
        ck.close()
        raise CheckpointError(f"{p}: holds no tensors")
    quant = config.get("quantization_config")
    packed = next((t for t in ck.tensors.values() if t.is_quantized or (not t.is_float and len(t.shape) >= 2)), None)
    if quant is not None and packed is not None:
        ck.close()
        method = quant.get("quant_method", "unnamed") if isinstance(quant, dict) else "unnamed"
        raise CheckpointError(f"{p}: config.json declares {method} quantization and tensor {packed.name} is stored "
                              f"as {packed.dtype}; updelta measures full-precision weights: compare de-quantized "
                              f"(bf16/fp32) checkpoints")
    return ck


def _open_all(paths: list[Path]) -> list:
    files = []
    try:
        for q in paths:
            files.append(_open_file(q))
    except BaseException:
        for f in files:
            f.close()
        raise
    return files


def _adapter_hint(p: Path) -> str | None:
    """A one-line explanation when folder `p` holds a PEFT adapter rather than a checkpoint."""
    if (p / "adapter_config.json").exists() or any(p.glob("adapter_model.*")):
        return (f"{p}: holds a PEFT adapter (adapter_config.json), not a full checkpoint; merge it into its base "
                f"first (PeftModel.from_pretrained(base, adapter).merge_and_unload().save_pretrained(DIR))")
    return None

