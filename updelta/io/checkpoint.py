"""A checkpoint: named tensors, read block by block, with the identity of the files they came from.

Which files a path stands for is decided by the format resolvers (`formats.RESOLVERS`): a Hugging Face
folder (`model.safetensors`, sharded `*.safetensors` with `model.safetensors.index.json`, `pytorch_model.bin`
or sharded `.bin` with its index, a folder of `*.safetensors`), a single `.safetensors` file, or a single
`.bin`/`.pt`/`.pth` state dict. Every file is validated when opened (docs/formats.md).
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CheckpointError
from .formats import FileSet, TensorFile, is_adapter, open_files, resolve
from .hub import is_url
from .jsonfiles import read_config
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
    file: TensorFile

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    @property
    def is_quantized(self) -> bool:
        return self.dtype in QUANTIZED_DTYPES

    @property
    def stored_dtype(self) -> str:
        """The dtype in the file (a de-quantized `io.quantized.DequantizedRef` reads as float32)."""
        return self.dtype

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


class Checkpoint(FileSet):
    """The tensors of one checkpoint, with its identity (path, format, files, dtypes)."""

    quantization: dict | None = None  # what `io.quantized` de-quantized (scales used, blocks), when anything

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
            for name in f.names():
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
            dtypes[t.stored_dtype] = dtypes.get(t.stored_dtype, 0) + 1
        h = hashlib.sha256()
        for f in self.files:  # sampled content hash: name, size, first and last 64 KiB of every file
            h.update(f"{f.path.name}:{f.size}".encode())
            if hasattr(f, "sample"):  # a remote file fetches its own sample
                h.update(f.sample())
                continue
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
            **({"quantization": {k: v for k, v in self.quantization.items() if not isinstance(v, list)}}
               if self.quantization else {}),
        }

    @property
    def tie_word_embeddings(self) -> bool | None:
        v = self.config.get("tie_word_embeddings")
        return v if isinstance(v, bool) else None



def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open the checkpoint at `path` (layouts: `formats.RESOLVERS`; a URL: `remote`). Reads and validates headers
    only."""
    if is_url(path):
        from .remote import open_remote
        return _build(*open_remote(path))
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or folder; pass a Hugging Face model folder, "
                              f"a .safetensors file or a .bin/.pt state dict")
    if p.is_dir() and is_adapter(p):  # factors, not weights: a run against its base (updelta.adapters)
        raise CheckpointError(_adapter_hint(p))
    layout = resolve(p)
    if layout is None:
        raise CheckpointError(_adapter_hint(p) or f"{p}: no weights found (expected model.safetensors, "
                                                   f"model.safetensors.index.json, pytorch_model.bin or its index)")
    config = read_config(p) if p.is_dir() else {}
    files = open_files(layout)
    return _build(p, layout.format, files, config, layout.weight_map, layout.index)


def _build(p, fmt: str, files: list, config: dict, weight_map: dict | None, index) -> Checkpoint:
    """The checkpoint of opened `files`, checked: it holds tensors, and no quantized weights under a config that
    declares a quantization (every file is closed on failure)."""
    try:
        ck = Checkpoint(p, fmt, files, config, weight_map, index)
    except BaseException:
        for f in files:
            f.close()
        raise
    if not ck.tensors:
        ck.close()
        raise CheckpointError(f"{p}: holds no tensors")
    if fmt == "gguf":  # GGUF: ggml types, float32 values, metadata as config (io.gguf_file, docs/inputs.md)
        from .gguf_file import gguf_refs
        ck.tensors = gguf_refs(ck.tensors)
        ck.config = {"gguf": {k: v for k, v in files[0].metadata.items() if not isinstance(v, (tuple, list))
                              and not k.startswith("tokenizer.")}}
    from .quantized import dequantize  # FP8 weights de-quantized, other quantized layouts refused (docs/quantized.md)
    try:
        dequantize(ck)
    except BaseException:
        ck.close()
        raise
    return ck


def _adapter_hint(p: Path) -> str | None:
    """A one-line explanation when folder `p` holds a PEFT adapter rather than a checkpoint."""
    if is_adapter(p) or any(p.glob("adapter_model.*")):
        return (f"{p}: holds a PEFT adapter (adapter_config.json), not a full checkpoint; pass it as a run "
                f"(NAME={p}) against the base it was trained on (docs/adapters.md)")
    return None
