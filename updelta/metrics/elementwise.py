"""The cheap per-tensor metric family: norms, direction and the three sparsity conventions.

Definitions (docs/metrics.md, "Norms and direction", "Update sparsity"):
W0 is the base tensor, W1 the fine-tuned one, D = W1 - W0, all widened exactly to the
wider stored dtype (float32 for bf16/fp16/fp32; float64 if either is float64). Elements
where W0 or W1 is NaN/Inf are left out of every metric and counted (`nonfinite_*`).

Each registered function below is the definition of one column and works on whole
tensors. The engine does not call them one by one: it streams blocks through one
fused pass (`partial_sums`, or the C kernel `updelta._fused.stats` on CPU), adds the
partial sums up (`Sums.add`) and turns them into the same columns (`finalize`, in the
torch-free `metrics.sums`, which also keeps the raw sums as columns). The tests
check the fused path against these definitions.
"""
from __future__ import annotations

import math

import torch

from updelta.metrics.registry import metric
from updelta.metrics.sums import BlockSums, Sums, finalize  # noqa: F401  (torch-free; re-exported for the engine)
from updelta.options import DiffOptions

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
def sparsity_atol(w0: torch.Tensor, w1: torch.Tensor, atol: float = DiffOptions.atol) -> float:
    """Share of elements with |D| <= atol (default 1e-5). D is exact (float32 of the widened values);
    Mukherjee et al. subtract in bf16, which rounds D but only matters for |D| within 0.4% of atol."""
    a, b = _widen(w0, w1)
    return float(((b - a).abs() <= atol).double().mean()) if a.numel() else math.nan


@metric("sparsity_rtol", "elementwise", SPARSITY + " (3. Zhu et al. 2025, arXiv 2511.08567)")
def sparsity_rtol(w0: torch.Tensor, w1: torch.Tensor, eta: float = DiffOptions.eta) -> float:
    """Share of elements with |D| <= eta * max(|W0|, |W1|) (default eta 1e-3; equals `exact` on bf16 storage,
    whose smallest relative change is 2^-8 = 0.39%)."""
    a, b = _widen(w0, w1)
    if not a.numel():
        return math.nan
    return float(((b - a).abs() <= eta * torch.maximum(a.abs(), b.abs())).double().mean())


def partial_sums(w0: torch.Tensor, w1: torch.Tensor, atol: float, eta: float,
                 hist: torch.Tensor | None = None) -> BlockSums:
    """One fused pass over a block (torch; any device): the record `Sums.add` takes.

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
    da = a.double()
    # Sums in float64. A float32 difference that overflows (finite weights above ~1e38: only damaged files) is
    # taken again in float64, as the C kernel does, so it never becomes an infinite norm.
    dd = torch.where(torch.isfinite(d), d.double(), b.double() - da)
    big = torch.maximum(a.abs(), b.abs())
    if hist is not None:
        _histogram(ad[m], hist)
    add = dd.abs()
    return BlockSums(used=int(m.sum()), nonfinite_base=int((~fa).sum()), nonfinite_ft=int((~fb).sum()),
                     ss_d=float((dd * dd).sum()), ss_base=float((da * da).sum()), dot=float((dd * da).sum()),
                     sum_abs=float(add.sum()), max_abs=float(add.max()) if add.numel() else 0.0,
                     eq=int((m & (a == b)).sum()), le_atol=int((m & (ad <= atol)).sum()),
                     le_rtol=int((m & (ad <= eta * big)).sum()))


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
