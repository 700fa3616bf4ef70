"""The C kernel's SIMD paths (`updelta._fused.simd`: portable, avx2, avx512; docs/kernel.md):
each path the CPU has gives the torch reference's counts, non-finite counts and maximum exactly and its float sums
within the kernel-vs-torch tolerance, on blocks with NaN/Inf and with finite values whose float32 sums overflow
(the chunks done again by the masked loop); `stats`, `stats_rowcol` and `stats_heads` give the same sums bit for
bit on every path; the row/column and head outputs agree across paths; UPDELTA_KERNEL_SIMD caps the path."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from updelta.metrics import elementwise as ew, pairwise as pw
from updelta.scan.jobs import kernel

pytestmark = pytest.mark.skipif(not kernel.available(), reason="the C kernel was not built")
ATOL, ETA = 1e-4, 1e-2
EXACT = ("used", "nonfinite_base", "nonfinite_ft", "max_abs", "eq", "le_atol", "le_rtol")
FLOAT = ("ss_d", "ss_base", "dot", "sum_abs")


def _paths() -> list[str]:
    if not kernel.available():
        return []
    have, f = [], kernel.fused
    for p in ("portable", "avx2", "avx512"):
        try:
            f.simd(p)
            have.append(p)
        except ValueError:
            pass
    f.simd("auto")
    return have


PATHS = _paths()


@pytest.fixture(params=PATHS)
def path(request):
    kernel.fused.simd(request.param)
    yield request.param
    kernel.fused.simd("auto")


def _block(n: int, seed: int, damage: str) -> tuple[np.ndarray, np.ndarray]:
    """float32 base / fine-tune of n elements, 30% changed by ~1e-3, some changes below atol, some equal;
    damage: "" (all finite), "nonfinite" (NaN/Inf in both, in two chunks), "overflow" (finite values near
    3e38 in one chunk: float32 sums and differences overflow)."""
    g = np.random.default_rng(seed)
    a = (g.standard_normal(n) * 0.02).astype(np.float32)
    d = (g.standard_normal(n) * 1e-3 * (g.random(n) < 0.3)).astype(np.float32)
    d[g.random(n) < 0.05] = 5e-5
    b = a + d
    if damage == "nonfinite":
        a[[3, 300, 301]] = [np.nan, np.inf, -np.inf]
        b[[5, 300, n - 1]] = [np.inf, np.nan, np.nan]
    if damage == "overflow":
        a[260:270] = 3e38
        b[260:265] = -3e38
    return a, b


def _bf16(x: np.ndarray) -> np.ndarray:
    return (x.view(np.uint32) >> 16).astype(np.uint16)


def _as_kind(x: np.ndarray, kind: int) -> np.ndarray:
    return x if kind == 0 else _bf16(x)


def _values(x: np.ndarray, kind: int) -> torch.Tensor:
    """The float32 values the kernel reads from storage of `kind` (bf16 widened exactly)."""
    return torch.from_numpy(x.copy() if kind == 0 else (_bf16(x).astype(np.uint32) << 16).view(np.float32))


@pytest.mark.parametrize("ka,kb", [(0, 0), (0, 1), (1, 0), (1, 1)])
@pytest.mark.parametrize("n", [1, 255, 257, 1000, 3 * 256 + 7])
@pytest.mark.parametrize("damage", ["", "nonfinite", "overflow"])
@pytest.mark.parametrize("hist", [False, True])
def test_each_path_equals_the_torch_reference(path, ka, kb, n, damage, hist):
    a, b = _block(n, n + ka * 2 + kb, damage if n > 301 else "")
    ra, rb = _as_kind(a, ka), _as_kind(b, kb)
    h = np.zeros(257, np.int64) if hist else None
    got = kernel.stats(ra, ka, rb, kb, ATOL, ETA, h)
    th = torch.zeros(257, dtype=torch.int64) if hist else None
    want = ew.partial_sums(_values(a, ka), _values(b, kb), ATOL, ETA, th)
    for f in EXACT:
        assert getattr(got, f) == getattr(want, f), f
    for f in FLOAT:
        assert np.isfinite(getattr(got, f)), f
        assert getattr(got, f) == pytest.approx(getattr(want, f), rel=1e-5, abs=1e-12), f
    if hist and damage != "overflow":  # an overflowed float32 difference: the kernel bins it as Inf (bin 255),
        assert h.tolist() == th.tolist()  # the torch reference elsewhere (as before the SIMD paths)


@pytest.mark.parametrize("ka,kb", [(0, 0), (1, 1), (0, 1)])
@pytest.mark.parametrize("damage", ["", "nonfinite", "overflow"])
@pytest.mark.parametrize("hist", [False, True])
def test_where_kernels_give_the_stats_sums_bit_for_bit(path, ka, kb, damage, hist):
    """The where figures on or off (`--no-where`) and the histogram never change a cheap column: the three kernels
    share one loop, the histogram is a pass of its own."""
    n, cols = 2 * 256 * 3 + 5, 96
    a, b = _block(n, 7, damage)
    ra, rb = _as_kind(a, ka), _as_kind(b, kb)

    def h():
        return np.zeros(257, np.int64) if hist else None

    plain = kernel.fused.stats(ra, ka, rb, kb, ATOL, ETA, h())
    assert plain == kernel.fused.stats(ra, ka, rb, kb, ATOL, ETA, None)  # the histogram changes no sum
    for start in (0, 37):
        nrows = (start + n - 1) // cols - start // cols + 1
        rc = kernel.fused.stats_rowcol(ra, ka, rb, kb, ATOL, ETA, h(), start, cols, np.zeros(nrows), np.zeros(cols))
        assert rc == plain
        for axis in (0, 1):
            hs = kernel.fused.stats_heads(ra, ka, rb, kb, ATOL, ETA, h(), start, cols, axis, np.zeros((6, nrows)),
                                          np.zeros((6, cols)))
            assert hs == plain


def _where_outputs(ra, rb, kind, start, cols):
    n = ra.size
    nrows = (start + n - 1) // cols - start // cols + 1
    rows, col = np.zeros(nrows), np.zeros(cols)
    kernel.fused.stats_rowcol(ra, kind, rb, kind, ATOL, ETA, None, start, cols, rows, col)
    heads = []
    for axis in (0, 1):
        rs, cs = np.zeros((6, nrows)), np.zeros((6, cols))
        kernel.fused.stats_heads(ra, kind, rb, kind, ATOL, ETA, None, start, cols, axis, rs, cs)
        heads.append((rs, cs))
    return rows, col, heads


@pytest.mark.skipif(len(PATHS) < 2, reason="this CPU has one SIMD path")
@pytest.mark.parametrize("damage", ["", "nonfinite"])
def test_row_column_and_head_sums_agree_across_paths(damage):
    """Energies within float64 rounding; the head counts (packed per column on axis 1) exactly, and equal to
    numpy's count of each flag per row and per column."""
    n, cols, start = 5000, 64, 19
    a, b = _block(n, 3, damage)
    ra, rb = _bf16(a), _bf16(b)
    out = {}
    try:
        for p in PATHS:
            kernel.fused.simd(p)
            out[p] = _where_outputs(ra, rb, 1, start, cols)
    finally:
        kernel.fused.simd("auto")
    va, vb = _values(a, 1).numpy().astype(np.float64), _values(b, 1).numpy().astype(np.float64)
    m = np.isfinite(va) & np.isfinite(vb)
    va, vb = np.where(m, va, 0), np.where(m, vb, 0)
    d = np.abs((vb.astype(np.float32) - va.astype(np.float32)).astype(np.float64))
    flags = [m, m & (va == vb), m & (d <= np.float32(ATOL)),
             m & (d <= np.float32(ETA) * np.float32(1) * np.maximum(np.abs(va), np.abs(vb)).astype(np.float32))]
    pos = np.arange(start, start + n)
    rix, cix = pos // cols - start // cols, pos % cols
    ref = out[PATHS[0]]
    for p in PATHS:
        rows, col, heads = out[p]
        np.testing.assert_allclose(rows, ref[0], rtol=1e-12, atol=0)
        np.testing.assert_allclose(col, ref[1], rtol=1e-12, atol=0)
        for axis, (rs, cs) in enumerate(heads):
            head, ix = (rs, rix) if axis == 0 else (cs, cix)
            for k, fl in enumerate(flags):
                assert head[2 + k].tolist() == np.bincount(ix, weights=fl, minlength=head.shape[1]).tolist(), (p, k)
            np.testing.assert_allclose(head[:2], ref[2][axis][0 if axis == 0 else 1][:2], rtol=1e-12, atol=0)


def test_simd_names_and_the_environment_cap():
    f = kernel.fused
    assert f.simd() in ("portable", "avx2", "avx512")
    with pytest.raises(ValueError, match="unknown name"):
        f.simd("sse9")
    assert f.simd("portable") == "portable"
    assert f.simd("auto") == PATHS[-1]
    env = {**os.environ, "UPDELTA_KERNEL_SIMD": "portable"}
    code = "from updelta.scan.jobs import kernel; print(kernel.fused.simd())"
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "portable"


@pytest.mark.parametrize("n", [1, 257, 3 * 256 + 7])
@pytest.mark.parametrize("damage", ["", "nonfinite", "overflow"])
def test_pair_on_each_path_equals_the_torch_reference(path, n, damage):
    """`pair` (two runs of one base): counts exact, sums within tolerance and finite, chunks with NaN/Inf or an
    overflow done again by the masked loop."""
    w0, wa = _block(n, 11, damage if n > 301 else "")
    _, wb = _block(n, 11, "")
    wb = wb + (np.random.default_rng(2).standard_normal(n) * 1e-3 * (np.arange(n) % 3 == 0)).astype(np.float32)
    if damage == "overflow" and n > 301:
        wb[262] = 3e38
    got = kernel.pair(w0, wa, wb, ATOL, ETA)
    want = pw.pair_partial_sums(*(torch.from_numpy(x.copy()) for x in (w0, wa, wb)), ATOL, ETA)
    for f in ("used", "both_exact", "both_atol", "both_rtol", "sign_agree"):
        assert getattr(got, f) == getattr(want, f), f
    for f in ("dot", "ss_a", "ss_b"):
        assert np.isfinite(getattr(got, f)), f
        assert getattr(got, f) == pytest.approx(getattr(want, f), rel=1e-5, abs=1e-12), f
