"""Spectral and subspace metrics of a weight update: one row of columns per 2-D tensor.

Definitions follow docs/metrics.md ("Rank of an update", "Spectrum and subspaces
of base vs fine-tuned"). Notation: W0 the base weight, W1 the fine-tuned one, D = W1 - W0, all
oriented [out, in] (the engine transposes GPT-2 Conv1D weights), so "left" singular vectors live on
the output side. s_i are singular values in descending order, r = min(m, n).

Modes (`DiffOptions.spectral`):
- `fast`: the update D only. The top k = `opts.topk` singular values come from a block Krylov
  solver (`linalg.topk_singular_values`, stopping at an estimated relative error of 2.5e-4, i.e.
  within the promised 1e-3); ||D||_F^2 is computed directly (exact), so `stable_rank`,
  `topk_energy` and the energy ranks need nothing else. `topk_sv_err_est` states the solver's
  estimated max relative error (0 when the values are exact). Works in the input dtype
  (`spectral_float64` applies to `full` only).
- `full`: exact SVDs in float32 (float64 with `opts.spectral_float64`): all singular values of D,
  and of W0 and W1 with their singular vectors, for every `fast` column (now exact) plus rank,
  effective rank, NSS, principal angles, off-principal alignment and intruder dimensions.

Each registered function below is the *definition* of one column, written directly from the
formula on whole 2-D tensors (exact SVDs, float64 by default). `spectral_columns` is the engine's
entry point: it computes every column of a mode at once, sharing the SVDs, and the tests check it
against these definitions and against closed forms.

Conventions where the references leave a choice (all stated in the docstrings):
- D = 0: `stable_rank`, `topk_energy`, `erank` are undefined (null); `rank_frac` is 0; the energy
  ranks are 0 (the smallest k with sum_{i<=k} s_i^2 >= q * 0); `topk_sv` is zeros. With W0 = W1 the
  subspace metrics are exact without any SVD: cosines 1, angles 0, NSS 0, no intruders, and the
  off-principal overlap is null (no changed element).
- Energy ranks beyond k: null ("> k"), never a guess.
- Non-finite W0 or W1: every column null except `spectral_s` (no SVD of NaN/Inf).
- Stacked experts: split into one 2-D row per expert before they get here (docs/experts.md).
"""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch

from updelta.metrics import schema
from updelta.metrics.linalg import (
    QR_ASPECT,
    blocked_r,
    svdvals,
    tall_r,
    topk_singular_values,
    topk_vectors,
    topk_vectors_may_pay,
)
from updelta.metrics.registry import metric
from updelta.metrics.streamed import Streamed, topk_streamed
from updelta.metrics.summary import summarize  # noqa: F401  (torch-free; kept here for existing callers)
from updelta.options import DiffOptions

RANK = "metrics.md, Rank of an update"
SUBSPACE = "metrics.md, Spectrum and subspaces of base vs fine-tuned"

# Intruder dimensions (Shuttleworth et al. 2024): top k = opts.intruder_k left singular vectors of W1,
# threshold eps = opts.intruder_eps, and this sweep of thresholds for plots (declared in the schema).
INTRUDER_SWEEP = schema.INTRUDER_SWEEP  # 0.1 .. 0.9
FAST_RTOL = 2.5e-4  # stopping tolerance of the fast solver (4x inside the promised 1e-3)
ENERGY_QS = {"energy_rank_90": 0.9, "energy_rank_99": 0.99}
ENERGY_RTOL = 1e-6  # energy ranks compare cumulative energy with q ||D||_F^2 (1 - ENERGY_RTOL): float32 rounding

# Column kinds (float, int, list) per mode: declared once in updelta.metrics.schema.
FAST_COLUMNS: dict[str, str] = schema.spectral_columns("fast")
FULL_COLUMNS: dict[str, str] = schema.spectral_columns("full")

SPECTRAL_COLUMNS: dict[str, str] = schema.spectral_columns()


# ---------------------------------------------------------------------------------------------
# Building blocks (pure, on whole tensors)
# ---------------------------------------------------------------------------------------------

def _fro2(d: torch.Tensor, chunk: int = 1 << 22) -> float:
    """||D||_F^2 accumulated in float64, in chunks (no full-size float64 copy). A float32 reduction is not
    enough: torch.linalg.vector_norm in float32 is 0.15% low on a 32000 x 768 update."""
    flat = d.reshape(-1)
    acc = torch.zeros((), dtype=torch.float64, device=d.device)
    for i in range(0, flat.numel(), chunk):
        x = flat[i:i + chunk].double()
        acc += torch.dot(x, x)
    return float(acc)


def _update_sums(w0: torch.Tensor, w1: torch.Tensor, chunk: int = 1 << 20) -> tuple[bool, float]:
    """(all finite, ||D||_F^2) of D = W1 - W0, accumulated in float64 over flat chunks as `_fro2(d)` does (smaller
    chunks: the same value to float64 rounding), one chunk of D alive at a time."""
    a, b = w0.reshape(-1), w1.reshape(-1)
    acc = torch.zeros((), dtype=torch.float64, device=w0.device)
    for i in range(0, a.numel(), chunk):
        x = b[i:i + chunk] - a[i:i + chunk]
        if not bool(torch.isfinite(x).all()):
            return False, float("nan")
        x = x.double()
        acc += torch.dot(x, x)
    return True, float(acc)


def _update_values(w0: torch.Tensor, w1: torch.Tensor) -> torch.Tensor:
    """All singular values of a long D = W1 - W0 (aspect >= QR_ASPECT) from the R factor of its tall orientation,
    built by row blocks of D formed on the fly (`linalg.blocked_r`): W0 and W1 stay the only full-size copies,
    where forming D and `svdvals(D)` would hold two more (D and LAPACK's copy of it)."""
    tall = w0.shape[0] >= w0.shape[1]
    if tall:
        rows = lambda a, b: w1[a:b] - w0[a:b]  # noqa: E731
    else:
        rows = lambda a, b: (w1[:, a:b] - w0[:, a:b]).T  # noqa: E731
    M, r = (w0.shape if tall else w0.shape[::-1])
    R = blocked_r(rows, M, r, w0.dtype)
    try:
        return torch.linalg.svdvals(R)
    except torch.linalg.LinAlgError:  # rare non-convergence in float32
        return torch.linalg.svdvals(R.double()).to(w0.dtype)


def _energy_rank(s: np.ndarray, fro2: float, q: float) -> int | None:
    """Smallest j with sum_{i<=j} s_i^2 >= q ||D||_F^2 (1 - ENERGY_RTOL), searched within the given values s;
    None if not reached (the caller reports "> len(s)"); 0 when D = 0."""
    if fro2 <= 0.0:
        return 0
    c = np.cumsum(np.asarray(s, dtype=np.float64) ** 2)
    hit = np.nonzero(c >= q * fro2 * (1 - ENERGY_RTOL))[0]
    return int(hit[0]) + 1 if hit.size else None


def _fast_from_values(s_top: np.ndarray, fro2: float, k: int) -> dict[str, object]:
    s_top = np.asarray(s_top, dtype=np.float64)[:k]
    s1 = float(s_top[0]) if s_top.size else 0.0
    out: dict[str, object] = {
        "stable_rank": fro2 / (s1 * s1) if s1 > 0 and fro2 > 0 else None,
        "topk_sv": [float(x) for x in s_top],
        "topk_energy": min(float(np.sum(s_top ** 2)) / fro2, 1.0) if fro2 > 0 else None,
    }
    for col, q in ENERGY_QS.items():
        out[col] = _energy_rank(s_top, fro2, q)
    return out


def _numerical_rank(s: np.ndarray, shape: tuple[int, int], dtype: torch.dtype) -> int:
    """torch.linalg.matrix_rank semantics: count of s_i > rtol * s_1, rtol = max(m, n) * eps(dtype)."""
    if s.size == 0 or s[0] <= 0:
        return 0
    tol = max(shape) * torch.finfo(dtype).eps * float(s[0])
    return int(np.sum(s > tol))


def _erank(s: np.ndarray) -> float | None:
    """Roy & Vetterli (2007): p_i = s_i / sum_j s_j, erank = exp(-sum_i p_i log p_i) (0 log 0 = 0)."""
    tot = float(np.sum(s))
    if not tot > 0:
        return None
    p = s[s > 0] / tot
    return float(math.exp(-float(np.sum(p * np.log(p)))))


def _nss(s0: np.ndarray, s1: np.ndarray) -> float | None:
    """Zhu et al.: ||s(W1) - s(W0)||_2 / ||s(W0)||_2 (None when W0 = 0)."""
    den = float(np.linalg.norm(s0))
    return float(np.linalg.norm(s1 - s0)) / den if den > 0 else None


def _principal(A: torch.Tensor, B: torch.Tensor) -> tuple[list[float], float]:
    """Principal angles between the column spaces of the orthonormal A, B (n x k each).

    cos(theta_i) = singular values of A^T B (descending, clipped to [0, 1]). The largest angle is taken
    from the sines (singular values of B - A A^T B, Bjorck & Golub 1973) when it is small, where arccos
    of a cosine near 1 would lose half the digits."""
    A = A.double()
    B = B.double()
    C = A.T @ B
    cos = torch.linalg.svdvals(C).clamp(0.0, 1.0).cpu().numpy()
    sin = torch.linalg.svdvals(B - A @ C).clamp(0.0, 1.0).cpu().numpy()
    smax = float(sin[0]) if sin.size else 0.0
    if smax < 0.5:
        ang = math.degrees(math.asin(smax))
    else:
        ang = math.degrees(math.acos(float(cos[-1]))) if cos.size else 0.0
    return [float(c) for c in cos], ang


def _intruder_counts(C: torch.Tensor, eps: float) -> tuple[int, list[int]]:
    """Shuttleworth et al.: C = U0^T Y, the cosines of the top left singular vectors y_j of W1 (columns of Y)
    with ALL left singular vectors x_i of W0 (the economy U0); count the y_j with max_i |cos(y_j, x_i)|
    below `eps` (opts.intruder_eps), and below each eps of INTRUDER_SWEEP."""
    mx = C.abs().amax(dim=0).double().cpu().numpy()
    return int(np.sum(mx < eps)), [int(np.sum(mx < e)) for e in INTRUDER_SWEEP]


def _row_chunks(m: int, n: int, target: int = 1 << 20):
    """Row ranges of about `target` elements: R's block and the select's integer temporaries (int64 digits
    included) stay near 20 bytes per element of the block, 20 MB, beside the job's full-size copies."""
    step = max(1, target // max(n, 1))
    for a in range(0, m, step):
        yield a, min(m, a + step)


def _offprincipal(w0: torch.Tensor, w1: torch.Tensor, Uk: torch.Tensor, sk: torch.Tensor, Vhk: torch.Tensor,
                  alpha: float) -> float | None:
    """Zhu et al. off-principal alignment: |M & P| / |M| with M = {W1 != W0} (exact convention) and
    P = {|R| >= t}, R = U_k diag(s_k) V_k^T the rank-k reconstruction of W0 and t the
    ceil(alpha * m n)-th largest |R| (the top-alpha fraction; ties at t are included).

    R is never materialised: it is rebuilt in row blocks, and t is found exactly by a radix select on the
    bit patterns of |R| (non-negative IEEE floats order like their bit patterns), 16 bits per pass."""
    m, n = w0.shape
    N = m * n
    kth = max(1, min(N, math.ceil(alpha * N - 1e-9)))
    L = Uk * sk  # m x k
    idt = torch.int32 if L.dtype == torch.float32 else torch.int64
    nbits = 31 if idt == torch.int32 else 63

    def absR(a, b):
        return (L[a:b] @ Vhk).abs_()

    # radix select of the kth largest bit pattern
    prefix, have, remaining = 0, 0, kth
    while have < nbits:
        w = min(16, nbits - have)
        shift = nbits - have - w
        counts = torch.zeros(1 << w, dtype=torch.int64, device=w0.device)
        for a, b in _row_chunks(m, n):
            bits = absR(a, b).view(idt).reshape(-1)
            if have:
                bits = bits[(bits >> (shift + w)) == prefix]
            counts += torch.bincount(((bits >> shift) & ((1 << w) - 1)).long(), minlength=1 << w)
        c = counts.flip(0).cumsum(0).cpu().numpy()  # c[j] = count with digit >= (2^w - 1 - j)
        j = int(np.searchsorted(c, remaining))  # first j with c[j] >= remaining
        digit = (1 << w) - 1 - j
        above = int(c[j - 1]) if j > 0 else 0
        remaining -= above
        prefix = (prefix << w) | digit
        have += w
    t_bits = torch.tensor([prefix], dtype=idt, device=w0.device)
    both = changed = 0
    for a, b in _row_chunks(m, n):
        msk = w1[a:b] != w0[a:b]
        changed += int(msk.sum())
        both += int((msk & (absR(a, b).view(idt) >= t_bits)).sum())
    return both / changed if changed else None


class Decomp:
    """The parts of an exact SVD W = U diag(S) V^T that the full mode needs: all singular values S, the
    leading left and right vectors, and U^T Y for all min(m, n) left vectors (intruders).

    Near-square W: `torch.linalg.svd` (economy). Tall W (m >= QR_ASPECT n): R = the triangular QR factor
    (Q never formed) and svd(R) = U_R S V^T give S and V exactly; a left vector is u_i = W v_i / s_i and
    U^T Y = diag(1/S) V^T (W^T Y), so the m x n U is never built (32000 x 768: 0.8 s instead of 1.9 s).
    Wide W: the same on W^T (U from svd(R^T), v_i = W^T u_i / s_i). When W is numerically rank-deficient
    (s_min <= max(m, n) eps s_1), where 1/s_i is meaningless, the economy SVD is used instead."""

    def __init__(self, w: torch.Tensor):
        m, n = w.shape
        self.w = w
        self.U = self.Vh = None
        self.side = "both"
        if max(m, n) >= QR_ASPECT * min(m, n):
            R = tall_r(w)
            try:
                Ur, S, Vhr = torch.linalg.svd(R if m >= n else R.T)
            except torch.linalg.LinAlgError:
                Ur, S, Vhr = (t.to(w.dtype) for t in torch.linalg.svd((R if m >= n else R.T).double()))
            if float(S[-1]) > max(m, n) * torch.finfo(w.dtype).eps * float(S[0]):
                self.S = S
                if m >= n:
                    self.Vh, self.side = Vhr, "v"
                else:
                    self.U, self.side = Ur, "u"
                return
        try:
            self.U, self.S, self.Vh = torch.linalg.svd(w, full_matrices=False)
        except torch.linalg.LinAlgError:  # rare non-convergence in float32: retry in float64
            self.U, self.S, self.Vh = (t.to(w.dtype) for t in torch.linalg.svd(w.double(), full_matrices=False))

    def parts(self, k: int) -> dict[str, torch.Tensor]:
        """What a later `from_parts` needs to answer u(j), vh(j) for j <= k and ut(): S, the whole U (unless
        the tall route kept V only), and Vh (whole on the tall route, else its top k rows)."""
        out = {"S": self.S}
        if self.U is not None:
            out["U"] = self.U
        if self.Vh is not None:
            out["Vh"] = self.Vh if self.U is None else self.Vh[:k]
        return out

    @classmethod
    def from_parts(cls, w: torch.Tensor, parts: dict[str, torch.Tensor]) -> "Decomp":
        """The decomposition of `w` from `parts(k)` of an earlier one of the same tensor (same bytes, dtype)."""
        self = cls.__new__(cls)
        self.w = w
        self.S = parts["S"]
        self.U = parts.get("U")
        self.Vh = parts.get("Vh")
        self.side = "both" if self.U is not None and self.Vh is not None else "u" if self.U is not None else "v"
        return self

    def u(self, k: int) -> torch.Tensor:
        """The top-k left singular vectors (m x k)."""
        if self.U is not None:
            return self.U[:, :k]
        return (self.w @ self.Vh[:k].T) / self.S[:k]

    def vh(self, k: int) -> torch.Tensor:
        """The top-k right singular vectors as rows (k x n)."""
        if self.Vh is not None:
            return self.Vh[:k]
        return ((self.w.T @ self.U[:, :k]) / self.S[:k]).T

    def ut(self, Y: torch.Tensor) -> torch.Tensor:
        """U^T Y over all min(m, n) left singular vectors."""
        if self.U is not None:
            return self.U.T @ Y
        return (self.Vh @ (self.w.T @ Y)) / self.S[:, None]


# ---------------------------------------------------------------------------------------------
# The engine's entry point
# ---------------------------------------------------------------------------------------------

def _null_row(mode: str) -> dict[str, object]:
    cols = dict.fromkeys(FAST_COLUMNS)
    if mode == "full":
        cols.update(dict.fromkeys(FULL_COLUMNS))
    return cols


def _matrix_fast(w0: torch.Tensor, w1: torch.Tensor, opts: DiffOptions) -> dict[str, object]:
    return _update_fast(w1 - w0, opts)


def update_columns(d: torch.Tensor, opts: DiffOptions) -> dict[str, object]:
    """`fast` mode's columns from the update D = W1 - W0 alone (float32 or float64, [out, in]): the same numbers
    as `spectral_columns(w0, w1, opts)` with D formed as w1 - w0, without W0 and W1 in memory. Includes
    `spectral_s`."""
    if d.ndim != 2:
        return {}
    t0 = time.perf_counter()
    out = _update_fast(d, opts)
    if d.is_cuda:
        torch.cuda.synchronize(d.device)
    out["spectral_s"] = time.perf_counter() - t0
    return out


def streamed_columns(rows: Callable[[int, int], torch.Tensor], shape: tuple[int, int], opts: DiffOptions,
                     max_bytes: int, keep_vectors: int = 0) -> tuple[dict[str, object], Streamed | None]:
    """`fast` mode's columns of an update D (M x N) given by its row blocks `rows(a, b)` (`streamed.topk_streamed`:
    memory is a row block and the Krylov basis, never D whole; docs/metrics.md, "Streamed spectra"), with the
    solve itself (for the lens's directions), or None when D is not finite. Includes `spectral_s`. The values
    satisfy the same tolerance as `update_columns` (rtol FAST_RTOL; ||D||_F^2 accumulated in float64)."""
    t0 = time.perf_counter()
    k = max(1, int(opts.topk))
    M, N = shape
    res = topk_streamed(rows, M, N, min(k, M, N), rtol=FAST_RTOL, block=max(k, 8), max_bytes=max_bytes,
                        keep_vectors=keep_vectors)
    if not res.finite:
        out = _null_row("fast")
        out["spectral_s"] = time.perf_counter() - t0
        return out, None
    out = _fast_from_values(res.top.values, res.fro2, k)
    out["topk_sv_err_est"] = 0.0 if res.top.exact else float(res.top.err_est)
    out["spectral_s"] = time.perf_counter() - t0
    return out, res


def full_bytes(shape: tuple[int, ...], opts: DiffOptions, stored_bytes: int) -> int:
    """What `full` mode holds for one tensor of this shape at the most (docs/metrics.md, "Memory"): W0, W1 and D in
    the working dtype, LAPACK's copy of one of them and the economy U, Vh of W0 and W1 (each at most m n), beside
    the stored bytes of one side."""
    wide = 8 if opts.spectral_float64 else 4
    numel = math.prod(shape)
    return stored_bytes + 6 * wide * numel


def _all_finite(x: torch.Tensor, chunk: int = 1 << 22) -> bool:
    """No NaN/Inf in x, checked in chunks (no tensor-sized bool mask)."""
    flat = x.reshape(-1)
    return all(bool(torch.isfinite(flat[i:i + chunk]).all()) for i in range(0, flat.numel(), chunk))


def _update_fast(d: torch.Tensor, opts: DiffOptions) -> dict[str, object]:
    k = max(1, int(opts.topk))
    r = min(d.shape)
    if not _all_finite(d):
        return _null_row("fast")
    fro2 = _fro2(d)
    if fro2 == 0.0:
        out = _fast_from_values(np.zeros(min(k, r)), 0.0, k)
        out["topk_sv_err_est"] = 0.0
        return out
    res = topk_singular_values(d, min(k, r), rtol=FAST_RTOL)
    del d
    out = _fast_from_values(res.values, fro2, k)
    out["topk_sv_err_est"] = 0.0 if res.exact else float(res.err_est)
    return out


def work_dtype(opts: DiffOptions, *dtypes: torch.dtype) -> torch.dtype:
    """The dtype of `full` mode's exact work: float64 with `opts.spectral_float64` or float64 storage, else float32."""
    return torch.float64 if (opts.spectral_float64 or torch.float64 in dtypes) else torch.float32


def base_decomposition(w0: torch.Tensor, opts: DiffOptions) -> "Decomp":
    """The exact decomposition of W0 that `full` mode needs (every singular value, U0 whole for the intruders,
    the top max(topk, offprincipal_k) right vectors), in the working dtype: the same for every run of a scan, so
    `scan.jobs.spectral.run_spectral_job` computes it once per tensor and `updelta.scan.jobs.spectral_cache` keeps it on disk."""
    return Decomp(w0.to(work_dtype(opts, w0.dtype)))


def _ft_parts(w1: torch.Tensor, kk: int, ki: int, s0: np.ndarray, d_norm2: float
              ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """What `full` mode needs of W1: all singular values (NSS), the top max(kk, ki) left vectors (principal angles,
    intruders) and the top kk right vectors (principal angles). The values come from `svdvals` (no vectors); the
    vectors from `linalg.topk_vectors` (subspace iteration, accepted only under its Wedin bound, see
    docs/metrics.md), else from an exact SVD. By Weyl's inequality |s_i(W1) - s_i(W0)| <= ||D||_2 = `d_norm2`, so
    W0's values `s0` bound W1's; when no W1 within those bounds could pass the iteration's a-priori test (flat
    spectra), the exact SVD is taken at once and the `svdvals` the test needs is not spent."""
    if topk_vectors_may_pay(tuple(w1.shape), kk, s0 - d_norm2, s0 + d_norm2, w1.dtype, each=ki):
        s1 = svdvals(w1).double().cpu().numpy()
        got = topk_vectors(w1, kk, s1, each=ki)
        if got is not None:
            U, _, Vh = got
            return s1, U[:, :max(kk, ki)], Vh[:kk].T
    dec1 = Decomp(w1)
    return dec1.S.double().cpu().numpy(), dec1.u(max(kk, ki)).clone(), dec1.vh(kk).T.clone()


def _matrix_full(w0: torch.Tensor, w1: torch.Tensor, opts: DiffOptions,
                 base: Callable[[], "Decomp"] | None = None) -> dict[str, object]:
    k = max(1, int(opts.topk))
    dt = work_dtype(opts, w0.dtype, w1.dtype)
    w0 = w0.to(dt)
    w1 = w1.to(dt)
    m, n = w0.shape
    r = min(m, n)
    long_ = max(m, n) >= QR_ASPECT * r
    d = None if long_ else w1 - w0  # a long D is never formed whole: see _update_values
    finite, fro2 = _update_sums(w0, w1) if long_ else (_all_finite(d), None)
    if not finite:
        return _null_row("full")
    fro2 = _fro2(d) if fro2 is None else fro2
    kk = min(k, r)
    if fro2 == 0.0:  # W1 == W0 (up to -0.0 == 0.0): everything follows from the definitions, no SVD needed
        out = _fast_from_values(np.zeros(kk), 0.0, k)
        out.update(topk_sv_err_est=0.0, rank_frac=0.0, erank=None, nss=0.0,
                   principal_cos_u=[1.0] * kk, principal_cos_v=[1.0] * kk, angle_u_max_deg=0.0,
                   angle_v_max_deg=0.0, offprincipal_overlap=None,
                   offprincipal_chance=float(opts.offprincipal_alpha), intruders=0,
                   intruders_sweep=[0] * len(INTRUDER_SWEEP))
        return out
    sd = (_update_values(w0, w1) if long_ else svdvals(d)).double().cpu().numpy()
    del d
    out = _fast_from_values(sd[:kk], fro2, k)
    out["topk_sv_err_est"] = 0.0
    out["rank_frac"] = _numerical_rank(sd, (m, n), dt) / r
    out["erank"] = _erank(sd)
    ki = min(int(opts.intruder_k), r)
    kp = min(max(1, int(opts.offprincipal_k)), r)
    dec0 = base() if base is not None else base_decomposition(w0, opts)
    s0 = dec0.S.double().cpu().numpy()
    s1, U1t, V1t = _ft_parts(w1, kk, ki, s0, float(sd[0]))
    out["nss"] = _nss(s0, s1)
    out["principal_cos_u"], out["angle_u_max_deg"] = _principal(dec0.u(kk), U1t[:, :kk])
    out["principal_cos_v"], out["angle_v_max_deg"] = _principal(dec0.vh(kk).T, V1t)
    out["intruders"], out["intruders_sweep"] = _intruder_counts(dec0.ut(U1t[:, :ki]), float(opts.intruder_eps))
    del U1t, V1t
    out["offprincipal_overlap"] = _offprincipal(w0, w1, dec0.u(kp), dec0.S[:kp], dec0.vh(kp),
                                                float(opts.offprincipal_alpha))
    out["offprincipal_chance"] = float(opts.offprincipal_alpha)
    return out


def spectral_columns(w0: torch.Tensor, w1: torch.Tensor, opts: DiffOptions,
                     base: Callable[[], "Decomp"] | None = None) -> dict[str, object]:
    """Spectral columns of one tensor pair (`opts.spectral` "fast" or "full"); see the module docstring.

    w0, w1: base and fine-tuned weight, float32 (or float64 when stored so), on the engine's device,
    oriented [out, in]. 2-D only (stacked experts arrive split into one 2-D row per expert,
    docs/experts.md); any other rank: {} (the engine fills nulls).
    `base` (full mode): a zero-argument function giving `base_decomposition(w0, opts)`, called only when the
    columns need it (shared by the runs of a scan and cached on disk by the engine); None computes it here.
    Always includes `spectral_s`, the wall seconds of this call (CUDA synchronised)."""
    if w0.ndim != 2:
        return {}
    if w0.shape != w1.shape:
        raise ValueError(f"spectral_columns: shapes differ {tuple(w0.shape)} vs {tuple(w1.shape)}")
    if opts.spectral not in ("fast", "full"):
        raise ValueError(f"spectral_columns: mode {opts.spectral!r} (expected 'fast' or 'full')")
    t0 = time.perf_counter()
    if not w0.dtype.is_floating_point or w0.dtype in (torch.float16, torch.bfloat16):
        w0, w1 = w0.float(), w1.float()
    out = _matrix_full(w0, w1, opts, base) if opts.spectral == "full" else _matrix_fast(w0, w1, opts)
    if w0.is_cuda:
        torch.cuda.synchronize(w0.device)
    out["spectral_s"] = time.perf_counter() - t0
    return out


# ---------------------------------------------------------------------------------------------
# Definitions (registered): exact, float64 by default, one column each
# ---------------------------------------------------------------------------------------------

def _f64(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to(torch.float64)


def _sv(x: torch.Tensor) -> np.ndarray:
    return torch.linalg.svdvals(_f64(x)).cpu().numpy()


def _opts(opts: DiffOptions | None) -> DiffOptions:
    return opts if opts is not None else DiffOptions()


@metric("stable_rank", "spectral_fast", RANK)
def stable_rank(w0: torch.Tensor, w1: torch.Tensor, opts: DiffOptions | None = None) -> float | None:
    """Stable rank of D = W1 - W0: ||D||_F^2 / s_1^2 = sum_i s_i^2 / s_1^2 (null when D = 0)."""
    s = _sv(w1 - w0)
    return float(np.sum(s ** 2) / s[0] ** 2) if s[0] > 0 else None


@metric("topk_sv", "spectral_fast", RANK)
def topk_sv(w0: torch.Tensor, w1: torch.Tensor, opts: DiffOptions | None = None) -> list[float]:
    """The top k = opts.topk singular values s_1 >= ... >= s_k of D (all min(m, n) when fewer)."""
    return [float(x) for x in _sv(w1 - w0)[:_opts(opts).topk]]


@metric("topk_energy", "spectral_fast", RANK)
def topk_energy(w0: torch.Tensor, w1: torch.Tensor, opts: DiffOptions | None = None) -> float | None:
    """Share of ||D||_F^2 in the top k singular values: sum_{i<=k} s_i^2 / ||D||_F^2 (null when D = 0)."""
    s = _sv(w1 - w0)
    tot = float(np.sum(s ** 2))
    return float(np.sum(s[:_opts(opts).topk] ** 2)) / tot if tot > 0 else None


def _energy_def(q: float) -> Callable:
    def f(w0: torch.Tensor, w1: torch.Tensor, opts: DiffOptions | None = None) -> int | None:
        s = _sv(w1 - w0)
        tot = float(np.sum(s ** 2))
        if tot == 0:
            return 0
        j = int(np.searchsorted(np.cumsum(s ** 2), q * tot * (1 - ENERGY_RTOL))) + 1
        return j if j <= _opts(opts).topk else None

    f.__doc__ = (f"Energy rank r_{q:g}: smallest j with sum_{{i<=j}} s_i^2 >= {q:g} ||D||_F^2, reported only when "
                 f"j <= k = opts.topk (null otherwise, printed '> k'); 0 when D = 0. The comparison allows a "
                 f"relative {ENERGY_RTOL:g} for float32 rounding, so planted ties resolve to the tie.")
    f.__name__ = f"energy_rank_{round(q * 100)}"
    return f


for _col, _q in ENERGY_QS.items():
    metric(_col, "spectral_fast", RANK)(_energy_def(_q))


@metric("rank_frac", "spectral_full", RANK + " (Mukherjee et al. 2025)")
def rank_frac(w0: torch.Tensor, w1: torch.Tensor, opts: DiffOptions | None = None) -> float:
    """Numerical rank of D over min(m, n): #{s_i > rtol s_1} / min(m, n) with torch.linalg.matrix_rank's default
    rtol = max(m, n) * eps of the working dtype (float32, float64 with opts.spectral_float64)."""
    o = _opts(opts)
    dt = torch.float64 if o.spectral_float64 else torch.float32
    d = (w1.to(dt) - w0.to(dt))
    return int(torch.linalg.matrix_rank(d)) / min(d.shape)


@metric("erank", "spectral_full", RANK + " (Roy & Vetterli 2007)")
def erank(w0: torch.Tensor, w1: torch.Tensor, opts: DiffOptions | None = None) -> float | None:
    """Effective rank of D: p_i = s_i / sum_j s_j, erank = exp(-sum_i p_i log p_i); 1 <= erank <= rank
    (null when D = 0)."""
    return _erank(_sv(w1 - w0))


@metric("nss", "spectral_full", SUBSPACE + " (Zhu et al. 2025)")
def nss(w0: torch.Tensor, w1: torch.Tensor, opts: DiffOptions | None = None) -> float | None:
    """Normalized spectrum shift: ||s(W1) - s(W0)||_2 / ||s(W0)||_2 over all min(m, n) singular values."""
    return _nss(_sv(w0), _sv(w1))


def _subspace_def(side: str, what: str) -> Callable:
    def f(w0: torch.Tensor, w1: torch.Tensor, opts: DiffOptions | None = None):
        k = min(_opts(opts).topk, *w0.shape)
        U0, _, Vh0 = torch.linalg.svd(_f64(w0), full_matrices=False)
        U1, _, Vh1 = torch.linalg.svd(_f64(w1), full_matrices=False)
        A, B = (U0[:, :k], U1[:, :k]) if side == "u" else (Vh0[:k].T, Vh1[:k].T)
        cos = torch.linalg.svdvals(A.T @ B).clamp(0, 1)
        if what == "cos":
            return [float(c) for c in cos]
        return math.degrees(math.acos(float(cos[-1])))

    name = {"u": "left (output side, U)", "v": "right (input side, V)"}[side]
    f.__doc__ = (f"Principal angles between the top-k {name} singular subspaces of W0 and W1 (k = opts.topk): "
                 f"cos(theta_i) = singular values of {side.upper()}0_k^T {side.upper()}1_k. "
                 + ("Returns the k cosines, descending." if what == "cos" else
                    "Returns the largest angle in degrees (arccos of the smallest cosine)."))
    return f


metric("principal_cos_u", "spectral_full", SUBSPACE)(_subspace_def("u", "cos"))
metric("principal_cos_v", "spectral_full", SUBSPACE)(_subspace_def("v", "cos"))
metric("angle_u_max_deg", "spectral_full", SUBSPACE)(_subspace_def("u", "deg"))
metric("angle_v_max_deg", "spectral_full", SUBSPACE)(_subspace_def("v", "deg"))


@metric("offprincipal_overlap", "spectral_full", SUBSPACE + " (Zhu et al. 2025, off-principal alignment)")
def offprincipal_overlap(w0: torch.Tensor, w1: torch.Tensor, opts: DiffOptions | None = None) -> float | None:
    """|M & P| / |M|: M = elements changed under the exact convention (W1 != W0); P = the top-alpha fraction
    (the ceil(alpha m n) largest, ties at the threshold included) of |R|, R = U_k diag(s_k) V_k^T the rank-k
    reconstruction of W0 (alpha = opts.offprincipal_alpha, k = opts.offprincipal_k). Null when M is empty.
    Compare with `offprincipal_chance` = alpha (independent masks)."""
    o = _opts(opts)
    U, S, Vh = torch.linalg.svd(_f64(w0), full_matrices=False)
    k = min(o.offprincipal_k, len(S))
    R = ((U[:, :k] * S[:k]) @ Vh[:k]).abs().reshape(-1)
    M = (w1 != w0).reshape(-1)
    if not bool(M.any()):
        return None
    kth = max(1, min(R.numel(), math.ceil(o.offprincipal_alpha * R.numel() - 1e-9)))
    t = torch.topk(R, kth).values[-1]
    return float((M & (R >= t)).sum()) / float(M.sum())


@metric("offprincipal_chance", "spectral_full", SUBSPACE + " (Zhu et al. 2025)")
def offprincipal_chance(w0: torch.Tensor, w1: torch.Tensor, opts: DiffOptions | None = None) -> float:
    """The chance level of `offprincipal_overlap`: alpha = opts.offprincipal_alpha (the share of elements in
    the principal mask; an update mask independent of it overlaps it by alpha in expectation)."""
    return float(_opts(opts).offprincipal_alpha)


def _intruder_def(what: str) -> Callable:
    def f(w0: torch.Tensor, w1: torch.Tensor, opts: DiffOptions | None = None):
        U0 = torch.linalg.svd(_f64(w0), full_matrices=False)[0]
        U1 = torch.linalg.svd(_f64(w1), full_matrices=False)[0]
        o = _opts(opts)
        mx = (U0.T @ U1[:, :o.intruder_k]).abs().amax(dim=0)
        if what == "count":
            return int((mx < o.intruder_eps).sum())
        return [int((mx < e).sum()) for e in INTRUDER_SWEEP]

    f.__doc__ = ("Intruder dimensions (Shuttleworth et al. 2024, arXiv 2410.21228): among the top k = "
                 "opts.intruder_k left singular vectors y_j of W1, the number with max_i |cos(y_j, x_i)| < eps over "
                 "ALL left singular vectors x_i of W0 (economy SVD: the min(m, n) vectors with singular values). "
                 + ("eps = opts.intruder_eps." if what == "count" else
                    f"Returns the counts for eps in {list(INTRUDER_SWEEP)}."))
    return f


metric("intruders", "spectral_full", SUBSPACE + " (Shuttleworth et al. 2024)")(_intruder_def("count"))
metric("intruders_sweep", "spectral_full", SUBSPACE + " (Shuttleworth et al. 2024)")(_intruder_def("sweep"))
