"""The C kernel's glue, written once: whether `updelta._fused` is built, and its inputs (docs/architecture.md).

The optional C extension (setup.py) computes the cheap pass's partial sums; every caller (the cheap and where jobs,
the in-memory path, the engine's environment probe) reaches it through this module, so there is one import of it
and one table of the dtypes it reads. Without a compiler the extension is absent (`fused is None`) and the torch
path gives the same numbers.
"""
from __future__ import annotations

import numpy as np

from updelta.metrics.schema import BlockSums, PairBlockSums

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


# ---- the one adapter of the kernel's outputs: its tuples become named records here, and nowhere else ----------
# The C functions return plain tuples in the order of `schema.BlockSums` / `schema.PairBlockSums` (`_ext/fused.c`,
# `stats_tuple` and `py_pair`); tests/metrics/test_sums_records.py checks the order field by field.

def stats(a, ka: int, b, kb: int, atol: float, eta: float, hist=None) -> BlockSums:
    """One block's cheap sums of `b` against `a` (kernel inputs, `kernel_input`); `hist` int64[257] or None."""
    return BlockSums._make(fused.stats(a, ka, b, kb, atol, eta, hist))


def pair(w0, wa, wb, atol: float, eta: float) -> PairBlockSums:
    """One block's pair sums of two runs' float32 values against the base's."""
    return PairBlockSums._make(fused.pair(w0, wa, wb, atol, eta))


def stats_rowcol(a, ka: int, b, kb: int, atol: float, eta: float, hist, pos: int, cols: int, rows, col) -> BlockSums:
    """`stats` and, in the same pass, the row and column energies of D into `rows` / `col` (docs/metrics.md)."""
    return BlockSums._make(fused.stats_rowcol(a, ka, b, kb, atol, eta, hist, pos, cols, rows, col))


def stats_heads(a, ka: int, b, kb: int, atol: float, eta: float, hist, pos: int, cols: int, axis: int, rs,
                cs) -> BlockSums:
    """`stats` and, in the same pass, the row/column energies per head range (docs/metrics.md)."""
    return BlockSums._make(fused.stats_heads(a, ka, b, kb, atol, eta, hist, pos, cols, axis, rs, cs))


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
