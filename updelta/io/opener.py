"""`open_checkpoint(path)`: a path (or URL) opened as a validated `Checkpoint` (docs/formats.md, docs/inputs.md).

The layout comes from the format resolvers (`formats.RESOLVERS`), URLs from `remote`; once opened, FP8 weights are
de-quantized and other quantized layouts refused (`quantized.dequantize`, docs/quantized.md).
"""
from __future__ import annotations

import os
from pathlib import Path

from updelta.errors import CheckpointError
from updelta.io.checkpoint import Checkpoint
from updelta.io.formats import is_adapter, open_files, resolve
from updelta.io.gguf_refs import gguf_refs
from updelta.io.hub import is_url
from updelta.io.jsonfiles import read_config
from updelta.io.quantized import dequantize
from updelta.io.remote import open_remote


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open the checkpoint at `path` (layouts: `formats.RESOLVERS`; a URL: `remote`). Reads and validates headers
    only."""
    if is_url(path):
        return _build(*open_remote(path))
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or folder; pass a Hugging Face model folder, "
                              f"a .safetensors file or a .bin/.pt state dict")
    if p.is_dir() and is_adapter(p):  # factors, not weights: a run against its base (updelta.scan.adapters)
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
        ck.tensors = gguf_refs(ck.tensors)
        ck.config = {"gguf": {k: v for k, v in files[0].metadata.items() if not isinstance(v, (tuple, list))
                              and not k.startswith("tokenizer.")}}
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
