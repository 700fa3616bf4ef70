"""Cross-run metrics of two updates D_a, D_b of the same base tensor W0.

Definitions (docs/metrics.md, "Across runs"):
- `delta_cos` = <D_a, D_b> / (||D_a|| ||D_b||); whole model = flattened over all tensors
  (task-vector convention, Ilharco et al. 2022).
- For each sparsity convention <conv> in exact, atol, rtol, with M_a, M_b the masks of
  *changed* elements: `jaccard_<conv>` = |M_a & M_b| / |M_a | M_b|, `overlap_a_<conv>` =
  |M_a & M_b| / |M_a|, `overlap_b_<conv>` = |M_a & M_b| / |M_b|, and their independence
  baselines (`*_random_<conv>`): for independent masks of densities d_a, d_b,
  E[Jaccard] = d_a d_b / (d_a + d_b - d_a d_b), E[overlap_a] = d_b, E[overlap_b] = d_a.
  Aggregates use the expected intersection summed per tensor (sum_t n_t d_a,t d_b,t).
- `sign_agree`: share of elements changed in both runs (exact) whose deltas have the same sign.
"""
from __future__ import annotations

import math

import torch

from updelta.metrics.registry import metric
from updelta.metrics.sums import CONVS, PairBlockSums, PairSums, finalize_pair  # noqa: F401  (torch-free; re-exported)
from updelta.options import DiffOptions

ACROSS = "metrics.md, Across runs"


def _deltas(w0, wa, wb):
    dt = torch.float64 if torch.float64 in (w0.dtype, wa.dtype, wb.dtype) else torch.float32
    w0, wa, wb = (t.to(dt).reshape(-1) for t in (w0, wa, wb))
    m = torch.isfinite(w0) & torch.isfinite(wa) & torch.isfinite(wb)
    return w0[m], wa[m], wb[m]


def changed_masks(w0, wa, wb, atol: float = DiffOptions.atol, eta: float = DiffOptions.eta) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Changed-element masks of both runs under each convention (the complement of 'unchanged')."""
    w0, wa, wb = _deltas(w0, wa, wb)
    da, db = wa - w0, wb - w0
    return {
        "exact": (wa != w0, wb != w0),
        "atol": (da.abs() > atol, db.abs() > atol),
        "rtol": (da.abs() > eta * torch.maximum(w0.abs(), wa.abs()), db.abs() > eta * torch.maximum(w0.abs(), wb.abs())),
    }


@metric("delta_cos", "pair", ACROSS)
def delta_cos(w0, wa, wb) -> float:
    """<D_a, D_b> / (||D_a||_F ||D_b||_F), D_x = W_x - W0; NaN if either update is zero."""
    w0, wa, wb = _deltas(w0, wa, wb)
    da, db = (wa - w0).double(), (wb - w0).double()
    den = float(da.norm() * db.norm())
    return float((da * db).sum()) / den if den > 0 else math.nan


@metric("jaccard_exact", "pair", ACROSS + " (update-mask overlap)")
def jaccard(w0, wa, wb, conv: str = "exact", atol: float = DiffOptions.atol, eta: float = DiffOptions.eta) -> float:
    """|M_a & M_b| / |M_a | M_b| of the changed-element masks under convention `conv`."""
    ma, mb = changed_masks(w0, wa, wb, atol, eta)[conv]
    u = int((ma | mb).sum())
    return int((ma & mb).sum()) / u if u else math.nan


@metric("sign_agree", "pair", ACROSS)
def sign_agree(w0, wa, wb) -> float:
    """Share of elements changed in both runs (exact) whose deltas have the same sign."""
    w0, wa, wb = _deltas(w0, wa, wb)
    both = (wa != w0) & (wb != w0)
    n = int(both.sum())
    return int((((wa - w0) > 0) == ((wb - w0) > 0))[both].sum()) / n if n else math.nan


def pair_partial_sums(w0: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor, atol: float, eta: float) -> PairBlockSums:
    """One fused pass over a block (torch; the reference of `updelta._fused.pair`)."""
    dt = torch.float64 if torch.float64 in (w0.dtype, wa.dtype, wb.dtype) else torch.float32
    w0, wa, wb = (t.reshape(-1).to(dt) for t in (w0, wa, wb))
    m = torch.isfinite(w0) & torch.isfinite(wa) & torch.isfinite(wb)
    z = torch.zeros((), dtype=dt, device=w0.device)
    w0, wa, wb = (torch.where(m, t, z) for t in (w0, wa, wb))
    da, db = wa - w0, wb - w0
    ce = (wa != w0) & (wb != w0)
    ca = da.abs() > atol
    cb = db.abs() > atol
    ra = da.abs() > eta * torch.maximum(w0.abs(), wa.abs())
    rb = db.abs() > eta * torch.maximum(w0.abs(), wb.abs())
    w0d = w0.double()  # a float32 difference that overflows is taken again in float64 (as the C kernel does)
    dda = torch.where(torch.isfinite(da), da.double(), wa.double() - w0d)
    ddb = torch.where(torch.isfinite(db), db.double(), wb.double() - w0d)
    return PairBlockSums(used=int(m.sum()), dot=float((dda * ddb).sum()), ss_a=float((dda * dda).sum()),
                         ss_b=float((ddb * ddb).sum()), both_exact=int((m & ce).sum()),
                         both_atol=int((m & ca & cb).sum()), both_rtol=int((m & ra & rb).sum()),
                         sign_agree=int((m & ce & ((da > 0) == (db > 0))).sum()))
