"""Stored tensors as torch tensors, for the jobs: raw views, whole tensors widened, reusable buffers, threads.

Files come from the per-process reader cache (`io.readers.open_reader`); buffers live for one job.
"""
from __future__ import annotations

import numpy as np
import torch

from updelta.io.locations import TensorLocation
from updelta.io.readers import open_reader
from updelta.scan.jobs.spectral_cache import tensor_digest


def use_threads(n: int) -> None:
    """Give the calling thread's torch ops `n` intra-op (BLAS/OpenMP) threads.

    torch keeps one process-wide count that each thread picks up, so jobs that run side by side
    must ask for the same `n` (the plan gives every job the same count); the scan restores the
    caller's count when it ends."""
    if n > 0 and torch.get_num_threads() != n:
        torch.set_num_threads(n)


def raw_to_torch(raw: np.ndarray, dtype: str) -> torch.Tensor:
    """A torch view of raw storage read by `io` (bf16 arrives as uint16 bits)."""
    if dtype == "bfloat16":
        return torch.from_numpy(raw.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(raw)


class Buffers:
    """Reusable buffers of one job."""

    def __init__(self):
        self.store: dict = {}

    def get(self, key, nbytes: int, dtype=np.uint8) -> np.ndarray:
        buf = self.store.get(key)
        if buf is None or buf.nbytes < nbytes:
            buf = self.store[key] = np.empty(nbytes // np.dtype(dtype).itemsize + 1, dtype=dtype)
        return buf


def materialize(loc: TensorLocation, numel: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """The tensor widened to float32 (float64 when stored so) on `device`."""
    return read_wide(loc, numel, shape, device)[0]


def read_wide(loc: TensorLocation, numel: int, shape: tuple[int, ...], device: torch.device,
              digest: bool = False) -> tuple[torch.Tensor, str | None]:
    """(the tensor widened to float32 (float64 when stored so) on `device`, a digest of its stored bytes or None).
    The stored bytes are freed before the caller goes on; on the CPU they widen in one copy."""
    raw = open_reader(loc).read(0, numel)
    key = tensor_digest(raw) if digest else None
    wide = torch.float64 if loc.dtype == "float64" else torch.float32
    w = raw_to_torch(raw, loc.dtype)
    w = w.to(device=device, dtype=wide)
    del raw
    return w.reshape(shape), key


def stored(loc: TensorLocation, numel: int, device: torch.device) -> torch.Tensor:
    """The tensor's elements as stored (bf16/fp16/fp32/fp64, flat) on `device`."""
    return raw_to_torch(open_reader(loc).read(0, numel), loc.dtype).to(device)


def load(loc: TensorLocation, dev: torch.device, dtype=torch.float64) -> torch.Tensor:
    """The whole tensor in `dtype` on `dev`, in its stored shape."""
    raw = open_reader(loc).read(0, loc.numel)
    return raw_to_torch(raw, loc.dtype).to(dev).to(dtype).reshape(loc.shape)
