"""The partial sums are named records, declared once (`metrics.schema.BlockSums` / `PairBlockSums`): the C kernel's
tuples (through their one adapter, `scan.jobs.kernel`) and the torch references give the same value in every named
field. The planted blocks give every sum a distinct known value, so a slot read in the wrong order fails here."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from updelta.metrics import elementwise as ew, pairwise as pw
from updelta.metrics.schema import MAX_FIELDS, SUM_COLUMNS, BlockSums, PairBlockSums
from updelta.metrics.sums import Sums
from updelta.scan.jobs import kernel

ATOL, ETA = 0.01, 0.05


def planted() -> tuple[np.ndarray, np.ndarray]:
    """Base and fine-tuned blocks: 7 equal, 4 tiny (|D| = 2^-7 <= atol), 5 medium (inside rtol only), 9 large
    changes; 2 NaN in the base, 3 Inf in the fine-tune. Every value is exact in float32."""
    base = np.arange(1, 26, dtype=np.float32) * 0.5 + 1.0  # 1.5 .. 13.5
    d = np.concatenate([np.zeros(7), np.full(4, 2.0 ** -7), np.full(5, 0.25), np.linspace(2.0, 6.0, 9)]).astype(np.float32)
    ft = base + d
    base = np.concatenate([base, [np.nan, np.nan], [1.0, 2.0, 3.0]]).astype(np.float32)
    ft = np.concatenate([ft, [1.0, 2.0], [np.inf, -np.inf, np.inf]]).astype(np.float32)
    return base, ft


def expected(base: np.ndarray, ft: np.ndarray) -> BlockSums:
    """The sums written out with numpy in float64, independent of the code under test."""
    fb, ff = np.isfinite(base), np.isfinite(ft)
    m = fb & ff
    a, b = base[m].astype(np.float64), ft[m].astype(np.float64)
    d = b - a
    return BlockSums(used=int(m.sum()), nonfinite_base=int((~fb).sum()), nonfinite_ft=int((~ff).sum()),
                     ss_d=float((d * d).sum()), ss_base=float((a * a).sum()), dot=float((d * a).sum()),
                     sum_abs=float(np.abs(d).sum()), max_abs=float(np.abs(d).max()), eq=int((a == b).sum()),
                     le_atol=int((np.abs(d) <= ATOL).sum()),
                     le_rtol=int((np.abs(d) <= ETA * np.maximum(np.abs(a), np.abs(b))).sum()))


def test_the_planted_block_gives_every_field_a_distinct_value():
    e = expected(*planted())
    assert (e.used, e.nonfinite_base, e.nonfinite_ft, e.eq, e.le_atol, e.le_rtol) == (25, 2, 3, 7, 11, 16)
    assert len(set(e)) == len(BlockSums._fields)


def _check(got: BlockSums, want: BlockSums) -> None:
    assert isinstance(got, BlockSums)
    for f in BlockSums._fields:
        assert getattr(got, f) == pytest.approx(getattr(want, f), rel=1e-12, abs=0), f


def test_torch_reference_fills_each_named_field():
    base, ft = planted()
    _check(ew.partial_sums(torch.from_numpy(base), torch.from_numpy(ft), ATOL, ETA), expected(base, ft))


@pytest.mark.skipif(not kernel.available(), reason="the C kernel was not built")
def test_c_kernel_fills_each_named_field_through_its_adapter():
    base, ft = planted()
    want = expected(base, ft)
    a, ka = kernel.kernel_input(base, "float32")
    b, kb = kernel.kernel_input(ft, "float32")
    _check(kernel.stats(a, ka, b, kb, ATOL, ETA, None), want)
    rows, cols = np.zeros(1), np.zeros(base.size)  # one row: the row/column pass returns the same record
    _check(kernel.stats_rowcol(a, ka, b, kb, ATOL, ETA, None, 0, base.size, rows, cols), want)


def _pair_expected(w0, wa, wb) -> PairBlockSums:
    m = np.isfinite(w0) & np.isfinite(wa) & np.isfinite(wb)
    a0, a, b = (x[m].astype(np.float64) for x in (w0, wa, wb))
    da, db = a - a0, b - a0
    ca, cb = da != 0, db != 0
    ta, tb = np.abs(da) > ATOL, np.abs(db) > ATOL
    ra = np.abs(da) > ETA * np.maximum(np.abs(a0), np.abs(a))
    rb = np.abs(db) > ETA * np.maximum(np.abs(a0), np.abs(b))
    return PairBlockSums(used=int(m.sum()), dot=float((da * db).sum()), ss_a=float((da * da).sum()),
                         ss_b=float((db * db).sum()), both_exact=int((ca & cb).sum()), both_atol=int((ta & tb).sum()),
                         both_rtol=int((ra & rb).sum()), sign_agree=int((ca & cb & ((da > 0) == (db > 0))).sum()))


def _pair_blocks():
    """Run a changes elements 0-29 by +0.5; run b changes 5-24 by +-0.5 (alternating), 25-29 and 30-32 by -2^-8
    (below atol); elements 20-24 sit on large base values (inside rtol). Counts: 40 used, 25 changed in both,
    20 in both under atol, 15 under rtol, 10 with the same sign."""
    w0 = (np.arange(40, dtype=np.float32) * 0.25 + 2.0)
    w0[20:25] = 20.0
    da = np.zeros(40, np.float32)
    db = np.zeros(40, np.float32)
    da[:30] = 0.5
    db[5:25] = np.where(np.arange(5, 25) % 2 == 0, 0.5, -0.5)
    db[25:33] = -(2.0 ** -8)
    return w0, w0 + da, w0 + db


def test_pair_records_agree_field_by_field():
    w0, wa, wb = _pair_blocks()
    want = _pair_expected(w0, wa, wb)
    ints = (want.used, want.both_exact, want.both_atol, want.both_rtol, want.sign_agree)
    assert ints == (40, 25, 20, 15, 10)
    assert len(set(ints)) == len(ints) and len({want.dot, want.ss_a, want.ss_b}) == 3
    got = pw.pair_partial_sums(*(torch.from_numpy(x) for x in (w0, wa, wb)), ATOL, ETA)
    assert isinstance(got, PairBlockSums) and got == pytest.approx(want)
    if kernel.available():
        k = kernel.pair(w0, wa, wb, ATOL, ETA)
        assert isinstance(k, PairBlockSums)
        for f in PairBlockSums._fields:
            assert getattr(k, f) == pytest.approx(getattr(want, f), rel=1e-12), f


def test_accumulator_adds_named_records_and_keeps_every_sum_column():
    base, ft = planted()
    one = expected(base, ft)
    s = Sums()
    s.add(one)
    s.add(one)
    assert s.used == 2 * one.used and s.max_abs == one.max_abs and s.ss_d == 2 * one.ss_d
    assert set(s.columns()) == set(SUM_COLUMNS.values())
    assert set(SUM_COLUMNS) | set(MAX_FIELDS) == set(BlockSums._fields)
    with pytest.raises(TypeError):
        s.add(tuple(one)[::-1])  # a bare tuple (slot order unknown) is refused
