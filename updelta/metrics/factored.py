"""Metrics of an update given as factors, D = scale * B @ A (B [out, r], A [r, in]), without forming D.

    ||D||_F^2   = scale^2 * sum((B^T B) * (A A^T))               (two r x r Gram matrices: O(r^2 (out + in)))
    <D, W0>     = scale * sum(B * (W0 @ A^T))                     (one pass over W0: O(out * in * r))
    <D1, D2>    = s1 s2 * sum((B1^T B2) * (A1 A2^T))              (= s1 s2 trace((B1^T B2)(A2 A1^T)))
    sigma(D)    = |scale| * sigma(R_B R_A^T),  B = Q_B R_B, A^T = Q_A R_A   (an r x r SVD: exact)

Definitions as for dense updates (docs/metrics.md, "Norms and direction", "Rank of an update"; docs/adapters.md);
float64 throughout.
"""
from __future__ import annotations

import numpy as np
import torch


def factored_fro(b: torch.Tensor, a: torch.Tensor, scale: float) -> float:
    """||scale * B @ A||_F from the factors."""
    b, a = b.double(), a.double()
    g = (b.T @ b) * (a @ a.T)
    return abs(scale) * float(g.sum().clamp_min(0).sqrt())


def factored_dot(b: torch.Tensor, a: torch.Tensor, scale: float, w0: torch.Tensor) -> float:
    """<scale * B @ A, W0> (Frobenius inner product) without forming the product."""
    return scale * float((b.double() * (w0.double() @ a.double().T)).sum())


def factored_inner(b1: torch.Tensor, a1: torch.Tensor, s1: float, b2: torch.Tensor, a2: torch.Tensor,
                   s2: float) -> float:
    """<s1 B1 A1, s2 B2 A2> from the factors (ranks may differ)."""
    g = (b1.double().T @ b2.double()) * (a1.double() @ a2.double().T)
    return s1 * s2 * float(g.sum())


def factored_singular_values(b: torch.Tensor, a: torch.Tensor, scale: float) -> np.ndarray:
    """All r singular values of scale * B @ A (descending, float64 numpy): QR of B and A^T, SVD of the r x r core."""
    b, a = b.double(), a.double()
    rb = torch.linalg.qr(b, mode="r").R  # [min(out, r), r]
    ra = torch.linalg.qr(a.T, mode="r").R  # [min(in, r), r]
    return abs(scale) * torch.linalg.svdvals(rb @ ra.T).cpu().numpy()
