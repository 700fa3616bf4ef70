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
    def itemsize(self) -> int:
        return {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}.get(self.dtype, 1)

    def read(self, start: int, count: int, out: np.ndarray | None = None) -> np.ndarray:
        """Elements [start, start+count) of the flattened tensor, raw storage (bf16 as uint16)."""
        return self.file.read(self.name, start, count, out)

    @property
    def location(self):
        """Where the tensor's bytes are, as picklable plain data (`io.locations.TensorLocation`)."""
        from .locations import location_of
        return location_of(self)


class Checkpoint:
    """The tensors of one checkpoint, with its identity (path, format, files, dtypes)."""

    def __init__(self, path: Path, fmt: str, files: list, config: dict):
        self.path = path
        self.format = fmt
        self.files = files
        self.config = config
        self.tensors: dict[str, TensorRef] = {}
        for f in files:
            names = f.entries if isinstance(f, SafetensorsFile) else f.tensors
            for name in names:
                if name in self.tensors:
                    raise CheckpointError(f"{f.path}: tensor {name} is also in {self.tensors[name].file.path}; "
                                          f"a checkpoint must hold each tensor once")
                self.tensors[name] = TensorRef(name, f.dtype_name(name), tuple(f.shape(name)), f)

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
        return None if v is None else bool(v)

    def close(self) -> None:
        for f in self.files:
            f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e.__class__.__name__}); re-save the checkpoint") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return obj


def _open_file(path: Path):
    if path.suffix == ".safetensors":
        return SafetensorsFile(path)
    if path.suffix in TORCH_SUFFIXES:
        return TorchFile(path)
    raise CheckpointError(f"{path}: unknown weight file type; expected .safetensors, .bin, .pt or .pth")


def _open_index(index: Path) -> list:
    obj = _read_json(index)
    wm = obj.get("weight_map")
    if not isinstance(wm, dict) or not wm:
        raise CheckpointError(f"{index}: no weight_map; re-save the checkpoint or pass a single weights file")
    files = []
    for shard in sorted(set(wm.values())):
        p = index.parent / shard
        if not p.exists():
            raise CheckpointError(f"{index}: names shard {shard}, which is missing; copy it beside the index")
        files.append(_open_file(p))
    return files


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open the checkpoint at `path` (see module docstring for layouts). Reads headers only."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or folder; pass a Hugging Face model folder, "
                              f"a .safetensors file or a .bin/.pt state dict")
    config: dict = {}
    files: list
    if p.is_dir():
        if (p / "config.json").exists():
            try:
                config = _read_json(p / "config.json")
            except CheckpointError:
                config = {}
        st_index, bin_index = p / "model.safetensors.index.json", p / "pytorch_model.bin.index.json"
        if st_index.exists():
            fmt, files = "safetensors-sharded", _open_index(st_index)
        elif (p / "model.safetensors").exists():
            fmt, files = "safetensors", [SafetensorsFile(p / "model.safetensors")]
        elif bin_index.exists():
            fmt, files = "bin-sharded", _open_index(bin_index)
        elif (p / "pytorch_model.bin").exists():
            fmt, files = "bin", [TorchFile(p / "pytorch_model.bin")]
        else:
            st = sorted(p.glob("*.safetensors"))
            tf = sorted(q for q in p.iterdir() if q.suffix in TORCH_SUFFIXES)
            if st:
                fmt, files = ("safetensors" if len(st) == 1 else "safetensors-sharded"), [SafetensorsFile(q) for q in st]
            elif len(tf) == 1:
                fmt, files = "bin", [TorchFile(tf[0])]
            else:
                raise CheckpointError(f"{p}: no weights found (expected model.safetensors, "
                                      f"model.safetensors.index.json, pytorch_model.bin or its index)")
    else:
        files = [_open_file(p)]
        fmt = "safetensors" if p.suffix == ".safetensors" else "bin"
    if not any(len(f.entries if isinstance(f, SafetensorsFile) else f.tensors) for f in files):
        raise CheckpointError(f"{p}: holds no tensors")
    return Checkpoint(p, fmt, files, config)
