"""Read a PyTorch `.bin`/`.pt` state dict safely.

Only `torch.load(..., weights_only=True)` is ever used: the restricted unpickler
refuses any object that is not a tensor or a plain container, so a malicious
pickle cannot run code. Zip-format files are memory-mapped (`mmap=True`), so a
tensor's pages are read only when its blocks are.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch

from updelta.errors import CheckpointError

_WRAPPER_KEYS = ("state_dict", "model", "module")


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and len(obj) == 1:
        (k, v), = obj.items()
        if k in _WRAPPER_KEYS and isinstance(v, dict):
            obj = v
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors; "
                              f"save `model.state_dict()` instead")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entry {bad[0]!r} is a {type(obj[bad[0]]).__name__}, not a tensor; "
                              f"save a plain state dict (name -> tensor)")
    return obj


class TorchFile:
    """A state dict loaded with weights_only=True (memory-mapped when the file is zip-format)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():  # a FIFO or device would block or never end
            raise CheckpointError(f"{self.path}: not a regular file; pass the weights file itself")
        try:
            self.size = self.path.stat().st_size
            mmap = zipfile.is_zipfile(self.path)
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot open ({e.strerror})") from None
        try:
            obj = torch.load(self.path, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else "unsupported object"
            raise CheckpointError(f"{self.path}: refused to unpickle: it holds objects other than tensors "
                                  f"({first[:160]}); only plain state dicts are read (weights_only=True)") from None
        except Exception as e:  # whatever the unpickler or zip reader raises on damaged bytes
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{self.path}: not a readable PyTorch checkpoint ({msg[:160]}); "
                                  f"re-save it with torch.save(model.state_dict(), path)") from None
        self.tensors = _unwrap(obj, self.path)

    def names(self) -> list[str]:
        return list(self.tensors)

    def dtype_name(self, name: str) -> str:
        return str(self.tensors[name].dtype).removeprefix("torch.")

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name].shape)

    def read(self, name: str, start: int, count: int, out: np.ndarray | None = None) -> np.ndarray:
        """Elements [start, start+count) of the flattened tensor as raw storage (bf16 -> uint16)."""
        t = self.tensors[name]
        if not t.is_contiguous():
            t = self.tensors[name] = t.contiguous()
        flat = t.reshape(-1)[start:start + count]
        if flat.dtype == torch.bfloat16:
            return flat.view(torch.int16).numpy().view(np.uint16)
        if flat.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            return flat.view(torch.uint8).numpy()
        return flat.numpy()

    def close(self) -> None:
        self.tensors = {}
