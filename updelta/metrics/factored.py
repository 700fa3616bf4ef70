"""Metrics of an update given as factors, D = scale * B @ A (B [out, r], A [r, in]), without forming D.

    ||D||_F^2 = scale^2 * sum((B^T B) * (A A^T))          (two r x r Gram matrices: O(r^2 (out + in)))
    <D, W0>   = scale * sum(B * (W0 @ A^T))                (one pass over W0: O(out * in * r))

Definitions as for dense updates (docs/metrics.md, "Norms and direction"); float64 accumulation.
"""
from __future__ import annotations

import torch


def factored_fro(b: torch.Tensor, a: torch.Tensor, scale: float) -> float:
    """||scale * B @ A||_F from the factors."""
    b, a = b.double(), a.double()
    g = (b.T @ b) * (a @ a.T)
    return abs(scale) * float(g.sum().clamp_min(0).sqrt())


def factored_dot(b: torch.Tensor, a: torch.Tensor, scale: float, w0: torch.Tensor) -> float:
    """<scale * B @ A, W0> (Frobenius inner product) without forming the product."""
    return scale * float((b.double() * (w0.double() @ a.double().T)).sum())
