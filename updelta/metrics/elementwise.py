"""The cheap per-tensor metric family: norms, direction and the three sparsity conventions.

Definitions (docs/metrics.md, "Norms and direction", "Update sparsity"):
W0 is the base tensor, W1 the fine-tuned one, D = W1 - W0, all widened exactly to the
wider stored dtype (float32 for bf16/fp16/fp32; float64 if either is float64). Elements
where W0 or W1 is NaN/Inf are left out of every metric and counted (`nonfinite_*`).

Each registered function below is the definition of one column and works on whole
tensors. The engine does not call them one by one: it streams blocks through one
fused pass (`partial_sums`, or the C kernel `updelta._fused.stats` on CPU), adds the
partial sums up (`add`) and turns them into the same columns (`finalize`). The tests
check the fused path against these definitions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .registry import metric

NORMS = "metrics.md, Norms and direction"
SPARSITY = "metrics.md, Update sparsity"
HIST_BINS = 257  # biased float32 exponent 0..255 of |D| (bin 0: subnormal), index 256: exact zeros


def _widen(w0: torch.Tensor, w1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dt = torch.float64 if torch.float64 in (w0.dtype, w1.dtype) else torch.float32
    w0, w1 = w0.to(dt).reshape(-1), w1.to(dt).reshape(-1)
    m = torch.isfinite(w0) & torch.isfinite(w1)
    return w0[m], w1[m]


@metric("delta_fro", "elementwise", NORMS)
def delta_fro(w0: torch.Tensor, w1: torch.Tensor) -> float:
    """||D||_F, the Frobenius norm of the update D = W1 - W0."""
    a, b = _widen(w0, w1)
    return float(torch.linalg.vector_norm((b - a).double()))


@metric("base_fro", "elementwise", NORMS)
def base_fro(w0: torch.Tensor, w1: torch.Tensor) -> float:
    """||W0||_F, the Frobenius norm of the base tensor."""
    a, _ = _widen(w0, w1)
    return float(torch.linalg.vector_norm(a.double()))


@metric("rel_delta", "elementwise", NORMS)
def rel_delta(w0: torch.Tensor, w1: torch.Tensor) -> float:
    """||D||_F / ||W0||_F; NaN when W0 = 0 (undefined)."""
    b = base_fro(w0, w1)
    return delta_fro(w0, w1) / b if b > 0 else math.nan


@metric("delta_max", "elementwise", NORMS)
def delta_max(w0: torch.Tensor, w1: torch.Tensor) -> float:
    """max |D|, the largest absolute change of one element."""
    a, b = _widen(w0, w1)
    return float((b - a).abs().max()) if a.numel() else math.nan


@metric("delta_mean_abs", "elementwise", NORMS)
def delta_mean_abs(w0: torch.Tensor, w1: torch.Tensor) -> float:
    """mean |D|, the average absolute change per element."""
    a, b = _widen(w0, w1)
    return float((b - a).abs().double().mean()) if a.numel() else math.nan


@metric("cos_delta_base", "elementwise", NORMS)
def cos_delta_base(w0: torch.Tensor, w1: torch.Tensor) -> float:
    """<D, W0> / (||D||_F ||W0||_F): > 0 when the update grows the existing weights, < 0 when it shrinks them."""
    a, b = _widen(w0, w1)
    d = (b - a).double()
    den = float(torch.linalg.vector_norm(d)) * float(torch.linalg.vector_norm(a.double()))
    return float((d * a.double()).sum()) / den if den > 0 else math.nan


@metric("sparsity_exact", "elementwise", SPARSITY + " (1. exact)")
def sparsity_exact(w0: torch.Tensor, w1: torch.Tensor) -> float:
    """Share of elements with W1 == W0 after exact widening (bit equality for equal dtypes, +0 == -0)."""
    a, b = _widen(w0, w1)
    return float((a == b).double().mean()) if a.numel() else math.nan


@metric("sparsity_atol", "elementwise", SPARSITY + " (2. Mukherjee et al. 2025, arXiv 2505.11711)")
def sparsity_atol(w0: torch.Tensor, w1: torch.Tensor, atol: float = 1e-5) -> float:
    """Share of elements with |D| <= atol (default 1e-5). D is exact (float32 of the widened values);
    Mukherjee et al. subtract in bf16, which rounds D but only matters for |D| within 0.4% of atol."""
    a, b = _widen(w0, w1)
    return float(((b - a).abs() <= atol).double().mean()) if a.numel() else math.nan


@metric("sparsity_rtol", "elementwise", SPARSITY + " (3. Zhu et al. 2025, arXiv 2511.08567)")
def sparsity_rtol(w0: torch.Tensor, w1: torch.Tensor, eta: float = 1e-3) -> float:
    """Share of elements with |D| <= eta * max(|W0|, |W1|) (default eta 1e-3; equals `exact` on bf16 storage,
    whose smallest relative change is 2^-8 = 0.39%)."""
    a, b = _widen(w0, w1)
    if not a.numel():
        return math.nan
    return float(((b - a).abs() <= eta * torch.maximum(a.abs(), b.abs())).double().mean())


@dataclass
class Sums:
    """Partial sums of one tensor (or block) from which `finalize` computes every cheap metric."""

    used: int = 0  # element pairs with both values finite
    nonfinite_base: int = 0
    nonfinite_ft: int = 0
    ss_d: float = 0.0  # sum D^2
    ss_base: float = 0.0  # sum W0^2
    dot: float = 0.0  # sum D * W0
    sum_abs: float = 0.0  # sum |D|
    max_abs: float = 0.0  # max |D|
    eq: int = 0  # W1 == W0
    le_atol: int = 0  # |D| <= atol
    le_rtol: int = 0  # |D| <= eta * max(|W0|, |W1|)

    def add(self, t: tuple) -> None:
        """Add a tuple in the order of `partial_sums`/the C kernel."""
        (used, nfb, nff, ss_d, ss_b, dot, sabs, mx, eq, at, rt) = t
        self.used += used
        self.nonfinite_base += nfb
        self.nonfinite_ft += nff
        self.ss_d += ss_d
        self.ss_base += ss_b
        self.dot += dot
        self.sum_abs += sabs
        self.max_abs = max(self.max_abs, float(mx))
        self.eq += eq
        self.le_atol += at
        self.le_rtol += rt


def partial_sums(w0: torch.Tensor, w1: torch.Tensor, atol: float, eta: float,
                 hist: torch.Tensor | None = None) -> tuple:
    """One fused pass over a block (torch; any device): the tuple `Sums.add` takes.

    This is the reference of the C kernel and the CUDA path. `hist` (int64[257], same
    device) is incremented with counts of |D| per float32 exponent bin.
    """
    dt = torch.float64 if torch.float64 in (w0.dtype, w1.dtype) else torch.float32
    a, b = w0.reshape(-1).to(dt), w1.reshape(-1).to(dt)
    fa, fb = torch.isfinite(a), torch.isfinite(b)
    m = fa & fb
    zero = torch.zeros((), dtype=dt, device=a.device)
    a, b = torch.where(m, a, zero), torch.where(m, b, zero)
    d = b - a
    ad = d.abs()
    dd, da = d.double(), a.double()
    big = torch.maximum(a.abs(), b.abs())
    if hist is not None:
        _histogram(ad[m], hist)
    return (int(m.sum()), int((~fa).sum()), int((~fb).sum()), float((dd * dd).sum()), float((da * da).sum()),
            float((dd * da).sum()), float(ad.double().sum()), float(ad.max()) if ad.numel() else 0.0,
            int((m & (a == b)).sum()), int((m & (ad <= atol)).sum()), int((m & (ad <= eta * big)).sum()))


def _histogram(ad: torch.Tensor, hist: torch.Tensor) -> None:
    zeros = ad == 0
    hist[256] += zeros.sum()
    nz = ad[~zeros].float()
    if nz.numel():
        _, e = torch.frexp(nz)  # nz = m * 2^e, m in [0.5, 1): biased exponent = e - 1 + 127
        idx = (e.long() + 126).clamp(0, 255)
        hist[:256] += torch.bincount(idx, minlength=256)


def hist_edges() -> list[float]:
    """Lower edges of the |D| bins: bin i (1..254) is [2^(i-127), 2^(i-126)); bin 0 is (0, 2^-126)."""
    return [0.0] + [2.0 ** (i - 127) for i in range(1, 256)]


def finalize(s: Sums) -> dict:
    """The cheap metric columns from a tensor's partial sums (NaN where undefined)."""
    n = s.used
    dfro, bfro = math.sqrt(s.ss_d), math.sqrt(s.ss_base)
    den = dfro * bfro
    return {
        "delta_fro": dfro,
        "base_fro": bfro,
        "rel_delta": dfro / bfro if bfro > 0 else math.nan,
        "delta_max": s.max_abs if n else math.nan,
        "delta_mean_abs": s.sum_abs / n if n else math.nan,
        "cos_delta_base": s.dot / den if den > 0 else math.nan,
        "sparsity_exact": s.eq / n if n else math.nan,
        "sparsity_atol": s.le_atol / n if n else math.nan,
        "sparsity_rtol": s.le_rtol / n if n else math.nan,
        "n_compared": n,
        "nonfinite_base": s.nonfinite_base,
        "nonfinite_ft": s.nonfinite_ft,
    }
