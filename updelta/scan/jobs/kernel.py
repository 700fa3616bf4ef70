"""The C kernel's glue, written once: whether `updelta._fused` is built, and its inputs (docs/architecture.md).

The optional C extension (setup.py) computes the cheap pass's partial sums; every caller (the cheap and where jobs,
the in-memory path, the engine's environment probe) reaches it through this module, so there is one import of it
and one table of the dtypes it reads. Without a compiler the extension is absent (`fused is None`) and the torch
path gives the same numbers.
"""
from __future__ import annotations

import numpy as np

try:  # the optional C kernel (see setup.py); the torch path gives the same numbers
    from updelta import _fused as fused
except ImportError:  # pragma: no cover - exercised when no compiler was available at install
    fused = None

KERNEL_KIND = {"float32": 0, "bfloat16": 1}  # the kernel's dtype codes of the element types it decodes itself
KERNEL_DTYPES = ("float32", "bfloat16", "float16")  # fp16 is widened to float32 first (`kernel_input`)


def available() -> bool:
    """Whether the C kernel was built (a module attribute would be copied by importers; this reads it live)."""
    return fused is not None


def accepts(*dtypes: str) -> bool:
    """Whether the kernel is built and reads every one of `dtypes`."""
    return fused is not None and all(d in KERNEL_DTYPES for d in dtypes)


def kernel_input(raw: np.ndarray, dtype: str):
    """(array, kind) for the C kernel, widening fp16 to float32."""
    if dtype in KERNEL_KIND:
        return raw, KERNEL_KIND[dtype]
    return raw.astype(np.float32), 0


def widen_f32(raw: np.ndarray, dtype: str, out: np.ndarray) -> np.ndarray:
    """`raw` (stored elements) as float32, in `out` unless already float32."""
    n = raw.size
    if dtype == "float32":
        return raw
    if dtype == "bfloat16":
        fused.widen_bf16(raw, out[:n])
        return out[:n]
    out[:n] = raw.astype(np.float32)
    return out[:n]
