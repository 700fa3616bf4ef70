"""`fast` mode's top-k singular values of an update D that is never held whole: a matrix-free operator.

D (M x N, in any orientation the caller streams) is given by its row blocks `rows(a, b)` (rows a..b-1, float32 or
float64, formed by the caller as W1 - W0 from the stored bytes), so memory is one row block plus the Krylov basis,
flat in the size of the tensor (docs/metrics.md, "Streamed spectra").

Method: block Lanczos with full reorthogonalisation on the N x N normal operator A = D^T D, applied in one pass
over the rows as A V = sum_blocks X^T (X V), every product in float64. The Krylov space K(D^T D, V_1) is the
right-side space of block Golub-Kahan-Lanczos (`linalg.topk_singular_values`), so the iteration counts match; the
Ritz values theta_i^2 are the eigenvalues of Q^T A Q (float64, grown one block per pass). Rounding: the operator
is applied in float64, so the Ritz values carry an absolute error of about eps64 ||D||_2^2, a relative error on
s_i of about eps64 (s_1 / s_i)^2 / 2, far inside the 1e-3 promised. The stopping test is the solver's own
(geometric tail estimate, `rtol` 2.5e-4). The same first pass accumulates ||D||_F^2 in float64 and checks
finiteness. A problem whose basis would reach `max_dim` without passing the test ends there with `converged` False
and its `err_est` (no exact fallback: it would need D whole), unless the N x N Gram matrix fits the budget: then
one more pass accumulates D^T D in float64 and its eigenvalues are taken (exact to float64 rounding).

`streamed_directions` adds the left/right vectors of the top pairs for the logit lens (two more passes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from updelta.metrics.linalg import TopK, ritz_error

Rows = Callable[[int, int], torch.Tensor]
BLOCK_ELEMS = 1 << 21  # elements per row block of a pass (16 MiB in float64)


@dataclass
class Streamed:
    """What one streamed solve found: `top` (TopK), `fro2` (||D||_F^2, float64), `finite` (no NaN/Inf in D),
    `basis` (N x d float64 Ritz vectors of the top values, columns, descending; None when not kept), `passes`."""

    top: TopK | None
    fro2: float
    finite: bool
    basis: torch.Tensor | None
    passes: int


def row_ranges(M: int, N: int, elems: int = BLOCK_ELEMS):
    """Row ranges of about `elems` elements."""
    step = max(1, elems // max(N, 1))
    for a in range(0, M, step):
        yield a, min(M, a + step)


def normal_pass(rows: Rows, M: int, N: int, V: torch.Tensor, sums: bool = False
                ) -> tuple[torch.Tensor, float, bool]:
    """(D^T D V in float64, ||D||_F^2, all finite) in one pass over the rows (the sums only when `sums`)."""
    Y = torch.zeros(N, V.shape[1], dtype=torch.float64)
    fro2, finite = 0.0, True
    for a, b in row_ranges(M, N):
        X = rows(a, b)
        if sums:
            if not bool(torch.isfinite(X).all()):
                return Y, math.nan, False
        X = X.double()
        if sums:
            x = X.reshape(-1)
            fro2 += float(torch.dot(x, x))
        Y.addmm_(X.T, X @ V)
    return Y, fro2, finite


def gram_pass(rows: Rows, M: int, N: int) -> torch.Tensor:
    """D^T D (N x N, float64) accumulated over the rows."""
    G = torch.zeros(N, N, dtype=torch.float64)
    for a, b in row_ranges(M, N):
        X = rows(a, b).double()
        G.addmm_(X.T, X)
    return G


def _orth(W: torch.Tensor, Q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BCGS2 against the rows of Q (d x N): (Qn columns orthonormal and orthogonal to Q, R with W - Q Q^T W = Qn R)."""
    if Q.shape[0]:
        W = W - Q.T @ (Q @ W)
    Q1, R1 = torch.linalg.qr(W)
    if Q.shape[0]:
        Q1 = Q1 - Q.T @ (Q @ Q1)
    Q2, R2 = torch.linalg.qr(Q1)
    return Q2, R2 @ R1


def topk_streamed(rows: Rows, M: int, N: int, k: int, *, rtol: float = 2.5e-4, block: int | None = None,
                  max_bytes: int = 256 << 20, seed: int = 0, keep_vectors: int = 0) -> Streamed:
    """The k largest singular values of the M x N matrix D given by `rows` (see the module docstring).
    `max_bytes` bounds the basis and Gram matrices (float64); `keep_vectors` > 0 keeps that many top Ritz
    vectors (N side) in `basis`."""
    r = min(M, N)
    k = min(k, r)
    b = min(max(k, 8) if block is None else block, N)
    cap = max(2 * b, min(60 * b, max(r // 2, 2 * b), max_bytes // (8 * N) - b))  # basis rows within the budget
    gen = torch.Generator().manual_seed(seed)
    V, _ = torch.linalg.qr(torch.randn(N, b, generator=gen, dtype=torch.float64))
    Y, fro2, finite = normal_pass(rows, M, N, V, sums=True)
    passes = 1
    if not finite:
        return Streamed(None, math.nan, False, None, passes)
    if fro2 == 0.0 or k == 0:
        return Streamed(TopK(np.zeros(k), 0, 0, True, True, 0.0, "streamed"), fro2, True, None, passes)
    if N <= 4 * b and 8 * N * N <= max_bytes:  # a tiny side: its Gram matrix at once
        return _gram(rows, M, N, k, fro2, keep_vectors, passes)
    Q = torch.empty(cap + b, N, dtype=torch.float64)
    H = np.zeros((cap + b, cap + b))
    d, iters = 0, 0
    Q[:b] = V.T
    prev = prev_delta = None
    err, exact, anorm = math.inf, False, 0.0
    tiny = 50 * torch.finfo(torch.float64).eps * math.sqrt(N)
    while True:
        C = (Q[:d + b] @ Y).numpy()
        H[:d + b, d:d + b] = C
        H[d:d + b, :d + b] = C.T
        d += b
        iters += 1
        lam, vec = np.linalg.eigh(H[:d, :d])
        theta = np.sqrt(np.clip(lam[::-1][:k], 0.0, None))
        anorm = max(anorm, float(theta[0]))
        if prev is not None:
            delta = np.maximum(theta - prev, 0.0)
            if prev_delta is not None:
                err = ritz_error(delta, prev_delta, theta, anorm)
                if err <= rtol:
                    break
            prev_delta = delta
        prev = theta
        Vn, R = _orth(Y, Q[:d])
        if float(torch.linalg.matrix_norm(R)) <= tiny * anorm * anorm or d + b > min(cap, N):
            exact = float(torch.linalg.matrix_norm(R)) <= tiny * anorm * anorm
            err = 0.0 if exact else err
            break
        Q[d:d + b] = Vn.T
        Y, _, _ = normal_pass(rows, M, N, Vn)
        passes += 1
    if not (exact or err <= rtol) and 8 * N * N <= max_bytes:
        del Q
        return _gram(rows, M, N, k, fro2, keep_vectors, passes)
    vals = np.zeros(k)
    vals[:theta.size] = theta
    basis = None
    if keep_vectors:
        W = torch.from_numpy(np.ascontiguousarray(vec[:, ::-1][:, :keep_vectors]))
        basis = Q[:d].T @ W
    return Streamed(TopK(vals, iters, d, exact, exact or err <= rtol, err, "streamed"), fro2, True, basis, passes)


def _gram(rows: Rows, M: int, N: int, k: int, fro2: float, keep_vectors: int, passes: int) -> Streamed:
    """The top k from the eigenvalues of D^T D accumulated in float64 (one pass): error about eps64 (s_1/s_i)^2."""
    lam, vec = torch.linalg.eigh(gram_pass(rows, M, N))
    s = torch.sqrt(lam.flip(0).clamp_min(0.0)).numpy()
    vals = np.zeros(k)
    vals[:min(k, s.size)] = s[:k]
    ratio = (s[0] / s[k - 1]) ** 2 if s[k - 1] > 0 else math.inf
    err = min(0.25 * torch.finfo(torch.float64).eps * ratio, 1.0)
    basis = vec.flip(1)[:, :keep_vectors].contiguous() if keep_vectors else None
    return Streamed(TopK(vals, 0, N, False, True, err, "streamed-gram"), fro2, True, basis, passes + 1)


def streamed_directions(rows: Rows, M: int, N: int, X: torch.Tensor
                        ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """From Ritz vectors X (N x k, unit columns) of D^T D: (Y = D X / s, M x k unit columns, s = ||D x_j||, the
    residuals ||D^T y_j - s_j x_j|| / s_1), in two passes (D X by rows, then D^T Y)."""
    DX = torch.empty(M, X.shape[1], dtype=torch.float64)
    for a, b in row_ranges(M, N):
        DX[a:b] = rows(a, b).double() @ X
    s = torch.linalg.vector_norm(DX, dim=0)
    Y = DX / torch.where(s > 0, s, torch.ones_like(s))
    DtY = torch.zeros(N, X.shape[1], dtype=torch.float64)
    for a, b in row_ranges(M, N):
        DtY.addmm_(rows(a, b).double().T, Y[a:b])
    res = torch.linalg.vector_norm(DtY - X * s, dim=0).numpy()
    s1 = float(s.max()) if s.numel() else 0.0
    return Y, s.numpy(), res / s1 if s1 > 0 else res
