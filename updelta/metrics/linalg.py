"""Top-k singular values without a full SVD: block Golub-Kahan-Lanczos (block Krylov).

`topk_singular_values(A, k)` returns the k largest singular values of a 2-D tensor A,
computed on A's device in A's dtype, to a relative accuracy `rtol` (default 2.5e-4, four
times tighter than the 1e-3 the `fast` spectral mode promises). Small matrices go to an
exact `svdvals`, tall ones with a short side of at most 1024 to the eigenvalues of their
Gram matrix (guarded by a rounding estimate), the rest to the Krylov solver below.

Method (Golub & Kahan 1965; block form as in Golub, Luk & Overton 1981; the gap-free
analysis of Musco & Musco 2015, "Randomized Block Krylov Methods for Stronger and Faster
Approximate SVD"):

    V_1 = orth(G),  G an n x b Gaussian block from a fixed-seed generator on A's device
    U_1 R_1 = A V_1
    V_{j+1} L_{j+1} = A^T U_j  - V_j R_j^T        (full reorthogonalisation against V_1..V_j)
    U_{j+1} R_{j+1} = A V_{j+1} - U_j L_{j+1}^T    (full reorthogonalisation against U_1..U_j)

so that A [V_1..V_j] = [U_1..U_j] B_j with B_j block upper bidiagonal (R_i on the diagonal,
L_{i+1}^T above it). The singular values of B_j (Ritz values) are lower bounds of the
singular values of A that increase monotonically with j (Cauchy interlacing on nested
subspaces). They are computed as square roots of the eigenvalues of B_j^T B_j, a banded
(bandwidth b) symmetric matrix kept in band storage and grown one block per iteration, in float64
on the CPU (scipy `eig_banded`, top k only), so a convergence check costs O(d^2 b) for a basis of
d = j b vectors, not O(d^3).

Orthogonalisation is BCGS2 (block classical Gram-Schmidt, twice, each pass followed by a
Householder QR), which keeps both bases orthonormal to working precision and handles rank
deficiency (a rank-r update with r < b) without spurious Ritz values.

Stopping test: per Ritz value, the last increase delta_j and the contraction factor
rho = delta_j / delta_{j-1} give the remaining error estimate delta_j * rho / (1 - rho)
(geometric tail; Krylov convergence is superlinear, so this over-estimates); the solver
stops when max_i estimate_i / theta_i <= rtol, when the Krylov space is invariant
(breakdown: exact), or when the basis reaches `max_dim` vectors (then `converged` is False
and the reported `err_est` says how far it is).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import eig_banded

__all__ = ["TopK", "topk_singular_values", "exact_singular_values", "svdvals", "tall_r", "topk_vectors",
           "VECTOR_RTOL"]


@dataclass(frozen=True)
class TopK:
    """Result of `topk_singular_values`: `values` (float64 numpy, descending, length k),
    `iters` (Krylov blocks), `dim` (basis size), `exact` (True when computed by a full
    svdvals or when the Krylov space became invariant), `converged`, `err_est` (estimated
    max relative error of the values), `method` ("svdvals", "gram", "krylov", "krylov+svdvals")."""

    values: np.ndarray
    iters: int
    dim: int
    exact: bool
    converged: bool
    err_est: float
    method: str = "krylov"


QR_ASPECT = 1.5  # from this aspect ratio on, exact SVDs start with a QR of the tall orientation


TSQR_ROWS = 4096  # row block of the blockwise QR (at least 4 r rows: at most 25% more flops than one QR)


def tall_r(A: torch.Tensor) -> torch.Tensor:
    """The triangular factor R (r x r, r = min(m, n)) of the QR decomposition of A's tall orientation
    (A or A^T): A^T A = R^T R (or A A^T = R^T R), so R has A's singular values and A's right (or left)
    singular vectors. Householder QR without forming Q: about 2 r^2 max(m, n) flops. A long matrix goes by
    row blocks (`blocked_r`), so LAPACK's working copy is one block, not the whole matrix."""
    T = A if A.shape[0] >= A.shape[1] else A.T
    return blocked_r(lambda a, b: T[a:b], T.shape[0], T.shape[1], T.dtype)


def blocked_r(rows, M: int, r: int, dtype: torch.dtype) -> torch.Tensor:
    """R of the QR of an M x r matrix (M >= r) given by its row blocks `rows(a, b)` (rows a..b-1, any layout):
    R_0 = qr(X_0).R, R_j = qr([R_{j-1}; X_j]).R (TSQR, backward stable like one Householder QR); blocks of
    max(TSQR_ROWS, 4 r) rows, one QR when M fits in two."""
    B = max(TSQR_ROWS, 4 * r)
    if M <= 2 * B:
        return torch.linalg.qr(rows(0, M), mode="r").R
    R = None
    for a in range(0, M, B):
        X = rows(a, min(M, a + B)).to(dtype)
        R = torch.linalg.qr(X if R is None else torch.cat([R, X]), mode="r").R
        del X
    return R


def svdvals(A: torch.Tensor) -> torch.Tensor:
    """All singular values of A (descending, A's dtype and device): `torch.linalg.svdvals`, of the
    r x r factor `tall_r(A)` when the aspect ratio is at least QR_ASPECT (measured here, one thread:
    768 x 2048 in 0.15 s instead of 0.23 s), with a float64 retry if LAPACK does not converge."""
    m, n = A.shape
    X = tall_r(A) if max(m, n) >= QR_ASPECT * max(min(m, n), 1) else A
    try:
        return torch.linalg.svdvals(X)
    except torch.linalg.LinAlgError:  # rare non-convergence in float32
        return torch.linalg.svdvals(X.double()).to(A.dtype)


def exact_singular_values(A: torch.Tensor) -> np.ndarray:
    """All singular values of A (descending) as float64 numpy (`svdvals`)."""
    return svdvals(A).double().cpu().numpy()


class _Basis:
    """Orthonormal basis vectors stored as the rows of a growing buffer (capacity doubles)."""

    def __init__(self, dim: int, b: int, device, dtype):
        self.buf = torch.empty(4 * b, dim, device=device, dtype=dtype)
        self.d = 0

    def append(self, Q: torch.Tensor) -> None:  # Q: dim x b (columns are the new vectors)
        nb = Q.shape[1]
        if self.d + nb > self.buf.shape[0]:
            cap = max(2 * self.buf.shape[0], self.d + nb)
            new = torch.empty(cap, self.buf.shape[1], device=self.buf.device, dtype=self.buf.dtype)
            new[:self.d] = self.buf[:self.d]
            self.buf = new
        self.buf[self.d:self.d + nb] = Q.T
        self.d += nb

    def view(self) -> torch.Tensor:  # d x dim
        return self.buf[:self.d]


def _orth_against(W: torch.Tensor, Qt: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """BCGS2 (block classical Gram-Schmidt twice, Householder QR after each pass): return (Qn, R)
    with W = Q C + Qn R, Qn (columns) orthonormal and orthogonal to the rows of Qt (= Q^T)."""
    if Qt is not None and Qt.shape[0]:
        W = W - Qt.T @ (Qt @ W)
    Q1, R1 = torch.linalg.qr(W)
    if Qt is not None and Qt.shape[0]:
        Q1 = Q1 - Qt.T @ (Qt @ Q1)
    Q2, R2 = torch.linalg.qr(Q1)
    return Q2, R2 @ R1


class _BandGram:
    """T = B^T B for the block upper bidiagonal B (diagonal blocks R_j, superdiagonal blocks L_j^T), a
    symmetric band matrix of bandwidth b, grown one column block per iteration in LAPACK upper band
    storage (ab[b + i - c, c] = T[i, c]); a Ritz check is one `eig_banded` call, O(d^2 b), top k only.

    T_jj = R_j^T R_j + L_j L_j^T and T_{j-1, j} = R_{j-1}^T L_j^T (lower triangular, so inside the band)."""

    def __init__(self, b: int):
        self.b = b
        self.ab = np.zeros((b + 1, 8 * b))
        self.j = 0
        self.R_prev: np.ndarray | None = None

    def add(self, R: np.ndarray, L: np.ndarray | None) -> None:
        """Append column block j from its diagonal block R_j and, for j > 0, the L_j with B_{j-1, j} = L_j^T."""
        b, j = self.b, self.j
        if (j + 1) * b > self.ab.shape[1]:
            ab = np.zeros((b + 1, 2 * self.ab.shape[1]))
            ab[:, :self.ab.shape[1]] = self.ab
            self.ab = ab
        Tjj = R.T @ R
        Toff = None
        if L is not None:
            Tjj += L @ L.T
            Toff = self.R_prev.T @ L.T
        c0 = j * b
        for q in range(b):
            self.ab[b - q:, c0 + q] = Tjj[:q + 1, q]
            if Toff is not None:
                self.ab[:b - q, c0 + q] = Toff[q:, q]
        self.j += 1
        self.R_prev = R

    def top(self, k: int) -> np.ndarray:
        """The k largest singular values of B (descending), square roots of the top eigenvalues of T."""
        d = self.j * self.b
        k = min(k, d)
        w = eig_banded(self.ab[:, :d], lower=False, eigvals_only=True, select="i", select_range=(d - k, d - 1),
                       check_finite=False)
        return np.sqrt(np.clip(w[::-1], 0.0, None))


def ritz_error(delta: np.ndarray, prev_delta: np.ndarray, theta: np.ndarray, anorm: float) -> float:
    """The estimated largest relative error of the Ritz values `theta` from their last two changes (`delta` and
    `prev_delta`: geometric extrapolation of the remaining change), scaled by max(theta, 1e-6 * ||A||); 0 for none."""
    with np.errstate(divide="ignore", invalid="ignore"):
        # a value that moves after a step without change gets no estimate (inf), not a zero one
        rho = np.where(prev_delta > 0, delta / np.where(prev_delta > 0, prev_delta, 1.0),
                       np.where(delta > 0, np.inf, 0.0))
    est = np.where(rho < 0.95, delta * rho / np.maximum(1.0 - rho, 1e-12), np.inf)
    est = np.where(delta == 0, 0.0, est)
    scale = np.maximum(theta, anorm * 1e-6)
    return float(np.max(est / scale)) if est.size else 0.0


def _gram_values(A: torch.Tensor, k: int) -> tuple[np.ndarray, float]:
    """Top-k singular values of a tall A (m >= n) from the eigenvalues of its n x n Gram matrix A^T A
    (one GEMM in A's dtype, eigvalsh in float64), with an estimate of their relative rounding error:
    the Gram matrix carries an absolute error of about eps * s_1^2, i.e. a relative error on s_i of about
    eps (s_1 / s_i)^2 / 2 (measured: at most 0.04 eps (s_1 / s_i)^2 on flat and power-law spectra; the
    estimate uses 0.25 eps (s_1 / s_i)^2)."""
    G = A.T @ A
    lam = torch.linalg.eigvalsh(G.double()).flip(0)[:k].clamp_min(0.0).cpu().numpy()
    del G
    s = np.sqrt(lam)
    if s.size == 0 or s[0] == 0:
        return s, 0.0
    with np.errstate(divide="ignore"):
        ratio2 = np.where(s > 0, (s[0] / np.where(s > 0, s, 1.0)) ** 2, np.inf)
    return s, float(0.25 * torch.finfo(A.dtype).eps * np.max(ratio2))


def topk_singular_values(A: torch.Tensor, k: int, *, rtol: float = 2.5e-4, block: int | None = None,
                         max_dim: int | None = None, exact_below: int = 384, gram_below: int = 1024,
                         gram_aspect: float = 2.0, seed: int = 0, fallback_exact: bool = True) -> TopK:
    """The k largest singular values of the 2-D tensor A (see the module docstring for the method).

    With m >= n the sides of A after transposing (n the short side), the method is:
    - `svdvals` (exact) when n <= exact_below (and m < gram_aspect n) or n <= 4 b;
    - `gram` when n <= gram_below and m >= gram_aspect n: eigenvalues of the n x n Gram matrix, accepted
      when their rounding estimate (see `_gram_values`) is within rtol, i.e. s_k >~ s_1 / 90; otherwise
      the Krylov solver runs (a steeply decaying or rank-deficient spectrum, where it converges fast);
    - `krylov` otherwise; a problem whose basis reaches `max_dim` (default min(60 b, n / 2)) before the
      stopping test passes is solved by svdvals (`krylov+svdvals`), unless `fallback_exact` is False
      (then the unconverged Ritz values come back with `converged` False and their `err_est`).
    Values beyond the numerical rank come back as (near) zeros.
    """
    if A.ndim != 2:
        raise ValueError("A must be 2-D")
    m, n = A.shape
    r = min(m, n)
    if k <= 0 or r == 0:
        return TopK(np.zeros(0), 0, 0, True, True, 0.0, "none")
    if block is None:
        block = max(k, 8)
    b = block
    if max_dim is None:
        max_dim = min(60 * b, r // 2)
    if m < n:  # work with the short side as V (the side whose basis we multiply by A)
        A = A.T
        m, n = n, m
    tall = m >= gram_aspect * n
    if (r <= exact_below and not tall) or r <= 4 * b:
        s = exact_singular_values(A)
        vals = np.zeros(k)
        vals[:min(k, r)] = s[:k]
        return TopK(vals, 0, r, True, True, 0.0, "svdvals")
    if tall and n <= gram_below:
        s, est = _gram_values(A, k)
        if est <= rtol:
            vals = np.zeros(k)
            vals[:s.size] = s
            return TopK(vals, 0, n, False, True, est, "gram")
    max_dim = max(min(max_dim, r - b), 2 * b)
    dev, dt = A.device, A.dtype
    gen = torch.Generator(device=dev).manual_seed(seed)
    G0 = torch.randn(n, b, generator=gen, device=dev, dtype=dt)
    V, _ = torch.linalg.qr(G0)
    del G0
    # Bases stored as rows (d x n, d x m) in buffers that grow by doubling, so that appending a
    # block is a copy of that block only and Q^T W is one GEMM on a contiguous slice.
    Vb = _Basis(n, b, dev, dt)
    Ub = _Basis(m, b, dev, dt)
    Vb.append(V)
    U, R = _orth_against(A @ V, None)
    Ub.append(U)
    T = _BandGram(b)
    T.add(R.double().cpu().numpy(), None)
    prev_delta: np.ndarray | None = None
    err = math.inf
    exact = False
    iters = 1
    theta = T.top(k)
    prev = theta
    anorm = float(theta[0]) if theta.size else 0.0
    tiny_rel = 50 * torch.finfo(dt).eps * math.sqrt(n)
    while True:
        W = A.T @ U  # n x b
        Vn, L = _orth_against(W, Vb.view())
        del W
        Ln = L.double().cpu().numpy()
        if float(np.linalg.norm(Ln)) <= tiny_rel * max(anorm, 1e-300):
            # the Krylov space is invariant: its Ritz values (the last ones computed) are exact
            exact = True
            err = 0.0
            break
        Vb.append(Vn)
        Un, R = _orth_against(A @ Vn, Ub.view())
        del Vn
        Ub.append(Un)
        U = Un
        T.add(R.double().cpu().numpy(), Ln)
        iters += 1
        theta = T.top(k)
        anorm = max(anorm, float(theta[0]))
        delta = np.maximum(theta - prev, 0.0)
        if prev_delta is not None:
            err = ritz_error(delta, prev_delta, theta, anorm)
            if err <= rtol:
                break
        prev_delta = delta
        prev = theta
        if Vb.d + b > max_dim:
            break
    dim = Vb.d
    del Vb, Ub, U
    if not (exact or err <= rtol) and fallback_exact:
        # not converged within max_dim: the spectrum is too flat for a basis much smaller than min(m, n),
        # where a dense svdvals costs about as much as the Krylov work already done
        s = exact_singular_values(A)
        vals = np.zeros(k)
        vals[:min(k, r)] = s[:k]
        return TopK(vals, iters, dim, True, True, 0.0, "krylov+svdvals")
    vals = np.zeros(k)
    vals[:theta.size] = theta[:k]
    return TopK(vals, iters, dim, exact, exact or err <= rtol, err, "krylov")


# ---------------------------------------------------------------------------------------------
# Top-k singular vectors, given all singular values
# ---------------------------------------------------------------------------------------------

VECTOR_RTOL = 1e-4  # accepted bound on sin(angle) of each needed vector / subspace (Wedin), see `topk_vectors`
VECTOR_FLOOR = 64  # ... or residuals at the rounding floor, VECTOR_FLOOR * eps * s_1 (as good as LAPACK's)


def _svd_flops(m: int, n: int) -> tuple[float, float]:
    """Rough flop counts (m >= n) of an economy SVD with vectors and of svdvals (Golub & Van Loan, table 8.6.1,
    R-SVD): the difference is what `topk_vectors` may spend."""
    return 4 * m * n * n + 22 * n ** 3, 4 * m * n * n - 4 * n ** 3 / 3


def _iteration_plan(m: int, n: int, k: int, lo: np.ndarray, hi: np.ndarray, *, each: int, rtol: float,
                    budget: float, eps: float) -> tuple[int, int, int] | None:
    """(block b, predicted iteration count q_pred, affordable count q_max) of `topk_vectors` on an m x n matrix
    whose top singular values lie in [lo_i, hi_i] (exact values: lo = hi = s), taking the most favourable values
    within the bounds; None when the iteration cannot run (r small, no gap, rho >= 1). Needs lo, hi of length
    >= b + 1 (b = min(2k + 4, r))."""
    r = min(m, n)
    if k <= 0 or r == 0:
        return None
    b = min(2 * k + 4, r)
    if 2 * b >= r or lo.size <= b or hi.size <= b or hi[0] <= 0:
        return None
    full, vals = _svd_flops(max(m, n), r)
    q_max = int(budget * (full - vals) / (4.0 * m * n * b))
    need = max(k, each)
    sub_gap = hi[k - 1] - lo[k]
    if sub_gap <= 0 or hi[need - 1] <= 0:
        return None

    def gap(j: int) -> float:  # the largest distance within the bounds of value j to its neighbours
        return min(hi[j - 1] - lo[j] if j > 0 else math.inf, hi[j] - lo[j + 1] if j + 1 < hi.size else math.inf)

    # a-priori count: the worst needed vector's error must shrink from O(sqrt(n)) to rtol * (its gap) / s_1
    g = min([sub_gap] + [gap(j) for j in range(each)])
    target = max(rtol * g, VECTOR_FLOOR * eps * hi[0]) / max(lo[0], 1e-300)
    rho = (max(lo[b], 0.0) / hi[need - 1]) ** 2
    if rho >= 1.0:
        return None
    if rho == 0.0:
        return b, 1, q_max
    return b, max(1, math.ceil(math.log(target / math.sqrt(n)) / math.log(rho))), q_max


def topk_vectors_may_pay(shape: tuple[int, int], k: int, lo: np.ndarray, hi: np.ndarray, dtype: torch.dtype, *,
                         each: int = 0, rtol: float = VECTOR_RTOL, budget: float = 0.5) -> bool:
    """False when `topk_vectors` is sure to return None for any matrix whose top singular values lie within
    [lo, hi] (e.g. Weyl's bounds s_i(W0) -/+ ||W1 - W0||_2 for W1): the caller can then take the exact SVD at once
    and skip the `svdvals` that `topk_vectors` would need. True: try it (it still decides on the exact values)."""
    plan = _iteration_plan(*shape, k, np.asarray(lo, np.float64), np.asarray(hi, np.float64), each=each,
                           rtol=rtol, budget=budget, eps=torch.finfo(dtype).eps)
    return plan is not None and plan[1] <= plan[2]


def topk_vectors(A: torch.Tensor, k: int, s: np.ndarray, *, each: int = 0, rtol: float = VECTOR_RTOL,
                 seed: int = 0, budget: float = 0.5):
    """The top-k singular triplets (U_k m x k, S_k, Vh_k k x n) of A by randomized subspace iteration with
    Rayleigh-Ritz extraction (Halko, Martinsson & Tropp 2011, alg. 4.4 and 5.1), or None when an exact SVD
    is the better route. `s` holds ALL singular values of A (exact, descending: from `svdvals`), which
    gives both the a-priori iteration count and the a-posteriori error bounds.

    Block b = min(2k, r - 1) + a few; after q iterations a Ritz vector's component outside the top-b space
    has shrunk by about (s_{b+1} / s_j)^(2q). Stopping test (Wedin's sin-theta theorem with the exact
    neighbours s_i): with residuals rho_j = ||A^T u_j - s~_j v_j|| (A v_j = s~_j u_j holds by construction),
    - the top-k subspaces: ||rho_1..k||_2 / (s~_k - s_{k+1}) <= rtol;
    - each of the first `each` vectors on its own: rho_j / min_{i != j} |s~_j - s_i| <= rtol;
    or, where a gap is so small that even LAPACK cannot do better, the residuals are at the rounding floor
    (VECTOR_FLOOR eps s_1). None (exact SVD instead) when the iteration count predicted from s would cost
    more than `budget` times what an SVD with vectors costs beyond svdvals, when r is small (2b >= r), or when
    the test does not pass within that count."""
    m, n = A.shape
    s = np.asarray(s, dtype=np.float64)
    if k <= 0 or min(m, n) == 0 or s.size < min(m, n) or s[0] <= 0:
        return None
    eps = torch.finfo(A.dtype).eps
    plan = _iteration_plan(m, n, k, s, s, each=each, rtol=rtol, budget=budget, eps=eps)
    if plan is None:
        return None
    b, q_pred, q_max = plan
    if q_pred > q_max:
        return None
    need = max(k, each)
    floor = VECTOR_FLOOR * eps * s[0]

    def gap(j: int, sj: float) -> float:  # distance of a value at position j to its exact neighbours
        return min(abs(sj - s[j - 1]) if j > 0 else math.inf, abs(sj - s[j + 1]) if j + 1 < s.size else math.inf)

    gen = torch.Generator(device=A.device).manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, b, generator=gen, device=A.device, dtype=A.dtype))
    for it in range(q_max):
        P, _ = torch.linalg.qr(A @ Q)
        Q, _ = torch.linalg.qr(A.T @ P)
        if it + 1 < q_pred:
            continue
        B = A @ Q  # m x b; svd(B) = Ub Sb Wb^T gives the Ritz triplets (Ub, Sb, Q Wb)
        Ub, Sb, Wh = torch.linalg.svd(B, full_matrices=False)
        U = Ub[:, :need]
        St = Sb[:need]
        V = Q @ Wh[:need].T
        R = A.T @ U - V * St  # n x need
        res = torch.linalg.vector_norm(R.double(), dim=0).cpu().numpy()
        st = St.double().cpu().numpy()
        ok = math.sqrt(float(np.sum(res[:k] ** 2))) <= max(rtol * (st[k - 1] - s[k]), floor)
        for j in range(each):
            ok = ok and res[j] <= max(rtol * gap(j, st[j]), floor)
        if ok:
            return U, St, V.T
    return None
