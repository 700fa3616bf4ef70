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
from dataclasses import dataclass

import torch

from .registry import metric

ACROSS = "metrics.md, Across runs"
CONVS = ("exact", "atol", "rtol")


def _deltas(w0, wa, wb):
    dt = torch.float64 if torch.float64 in (w0.dtype, wa.dtype, wb.dtype) else torch.float32
    w0, wa, wb = (t.to(dt).reshape(-1) for t in (w0, wa, wb))
    m = torch.isfinite(w0) & torch.isfinite(wa) & torch.isfinite(wb)
    return w0[m], wa[m], wb[m]


def changed_masks(w0, wa, wb, atol: float = 1e-5, eta: float = 1e-3) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
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
def jaccard(w0, wa, wb, conv: str = "exact", atol: float = 1e-5, eta: float = 1e-3) -> float:
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


@dataclass
class PairSums:
    """Partial sums of one tensor for one pair of runs."""

    used: int = 0
    dot: float = 0.0
    ss_a: float = 0.0
    ss_b: float = 0.0
    both_exact: int = 0
    both_atol: int = 0
    both_rtol: int = 0
    sign_agree: int = 0

    def add(self, t: tuple) -> None:
        used, dot, ssa, ssb, be, ba, br, sg = t
        self.used += used
        self.dot += dot
        self.ss_a += ssa
        self.ss_b += ssb
        self.both_exact += be
        self.both_atol += ba
        self.both_rtol += br
        self.sign_agree += sg


def pair_partial_sums(w0: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor, atol: float, eta: float) -> tuple:
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
    dda, ddb = da.double(), db.double()
    return (int(m.sum()), float((dda * ddb).sum()), float((dda * dda).sum()), float((ddb * ddb).sum()),
            int((m & ce).sum()), int((m & ca & cb).sum()), int((m & ra & rb).sum()),
            int((m & ce & ((da > 0) == (db > 0))).sum()))


def finalize_pair(s: PairSums, changed_a: dict[str, int], changed_b: dict[str, int], expected_both: dict[str, float],
                  n: int) -> dict:
    """Pair columns from partial sums, per-run changed counts and the expected intersection of independent masks.

    `expected_both[conv]` is sum over tensors of n_t d_a,t d_b,t (one tensor: |A| |B| / n).
    """
    den = math.sqrt(s.ss_a) * math.sqrt(s.ss_b)
    out = {"delta_cos": s.dot / den if den > 0 else math.nan,
           "dot": s.dot, "delta_fro_a": math.sqrt(s.ss_a), "delta_fro_b": math.sqrt(s.ss_b), "n_compared": n}
    both = {"exact": s.both_exact, "atol": s.both_atol, "rtol": s.both_rtol}
    for c in CONVS:
        a, b, ab, e = changed_a[c], changed_b[c], both[c], expected_both[c]
        union, e_union = a + b - ab, a + b - e
        out[f"jaccard_{c}"] = ab / union if union else math.nan
        out[f"jaccard_random_{c}"] = e / e_union if e_union > 0 else math.nan
        out[f"overlap_a_{c}"] = ab / a if a else math.nan
        out[f"overlap_a_random_{c}"] = e / a if a else math.nan
        out[f"overlap_b_{c}"] = ab / b if b else math.nan
        out[f"overlap_b_random_{c}"] = e / b if b else math.nan
        out[f"n_changed_a_{c}"] = a
        out[f"n_changed_b_{c}"] = b
        out[f"n_both_{c}"] = ab
        out[f"expected_both_{c}"] = e
    out["sign_agree"] = s.sign_agree / s.both_exact if s.both_exact else math.nan
    out["n_sign_agree"] = s.sign_agree
    return out
