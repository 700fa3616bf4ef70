"""The logit lens of an update: the top singular directions of D and the tokens each one promotes and suppresses.

Pure functions of tensors (docs/metrics.md, "Logit lens of the update"):

- `top_directions(d, k)`: the k largest singular triplets of a dense update D ([out, in], out = the hidden size
  of an output-side module) as `Directions` (sigma_i, the left directions u_i as columns, the residuals);
  an exact SVD when the short side is small, else randomized subspace iteration with Rayleigh-Ritz
  extraction (Halko, Martinsson & Tropp 2011, alg. 4.4 and 5.1) stopped on the residuals;
- `factored_directions(L, R, scale, k)`: the same, exactly, for D = scale * L @ R (an adapter's factors);
- `gains(norm, offset)`: the final norm's elementwise gain g = w + offset (offset 1 for Gemma's 1 + w);
- `Candidates`: running top and bottom scores of the columns of Z = W_U @ G over row blocks of the unembedding
  W_U, so that W_U is streamed and never materialised;
- `finish(...)`: the sign convention and the promoted / suppressed tokens from exact (float64) scores.

Sign convention: a singular pair (u, v) is defined up to a common sign; each is fixed so that the
largest-magnitude score of z = sigma (g * u) W_U^T is positive (the direction's strongest effect is a promotion;
ties broken by the lower token id).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

EXACT_MAX = 256  # short side at most this: an exact SVD
DIR_RTOL = 1e-3  # stop when every needed residual ||D^T u_j - s_j v_j|| <= DIR_RTOL * s_1
MAX_ITER = 40  # subspace iterations at most (then the residuals say how far the directions are)
TOP = 10  # promoted and suppressed tokens kept per direction
CANDIDATES = 3  # candidates kept per end and direction, as a multiple of TOP, for the exact rescoring


@dataclass(frozen=True)
class Directions:
    """The top singular directions of one update: `sigma` (float64, descending, k), `u` (float64 numpy,
    [out, k], unit columns), `resid` (float64, k: ||D^T u_j - s_j v_j|| / s_1, 0 when exact)."""

    sigma: np.ndarray
    u: np.ndarray
    resid: np.ndarray

    @staticmethod
    def empty(m: int) -> "Directions":
        return Directions(np.zeros(0), np.zeros((m, 0)), np.zeros(0))


def _finite(x: torch.Tensor, chunk: int = 1 << 22) -> bool:
    flat = x.reshape(-1)
    return all(bool(torch.isfinite(flat[i:i + chunk]).all()) for i in range(0, flat.numel(), chunk))


def _pack(U: torch.Tensor, S: torch.Tensor, resid: np.ndarray | None, k: int, shape: tuple[int, int]) -> Directions:
    """The top k, less those at the rounding floor (s_j <= max(m, n) eps s_1, `torch.linalg.matrix_rank`'s cut)."""
    s = S[:k].double().cpu().numpy()
    keep = s > (max(shape) * torch.finfo(S.dtype).eps * s[0] if s.size else 0.0)
    u = U[:, :k].double().cpu().numpy()[:, keep]
    r = np.zeros(int(keep.sum())) if resid is None else np.asarray(resid[:k], dtype=np.float64)[keep]
    return Directions(s[keep], u, r)


def top_directions(d: torch.Tensor, k: int, *, rtol: float = DIR_RTOL, max_iter: int = MAX_ITER,
                   seed: int = 0) -> Directions:
    """The k largest singular values of D with their left directions (fewer when D's rank is lower; none when D is
    zero or not finite). Computed in D's dtype on D's device."""
    m, n = d.shape
    k = min(int(k), m, n)
    if k <= 0 or not _finite(d) or not bool((d != 0).any()):
        return Directions.empty(m)
    r = min(m, n)
    b = min(2 * k + 8, r)
    if r <= EXACT_MAX or 2 * b >= r:
        U, S, _ = torch.linalg.svd(d, full_matrices=False)
        return _pack(U, S, None, k, (m, n))
    gen = torch.Generator(device=d.device).manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, b, generator=gen, device=d.device, dtype=d.dtype))
    for _ in range(max_iter):
        P, _ = torch.linalg.qr(d @ Q)
        Q, _ = torch.linalg.qr(d.T @ P)
        Ub, Sb, Wh = torch.linalg.svd(d @ Q, full_matrices=False)  # D Q = Ub Sb Wh: Ritz triplets (Ub, Sb, Q Wh^T)
        U, S = Ub[:, :k], Sb[:k]
        res = torch.linalg.vector_norm((d.T @ U - (Q @ Wh[:k].T) * S).double(), dim=0).cpu().numpy()
        s1 = float(Sb[0])
        res = res / s1 if s1 > 0 else res
        if float(res.max()) <= rtol:
            break
    return _pack(U, S, res, k, (m, n))


def factored_directions(L: torch.Tensor, R: torch.Tensor, scale: float, k: int) -> Directions:
    """Exact top-k directions of D = scale * L @ R (L [out, r], R [r, in]): QR of L and R^T, SVD of the r x r core,
    in float64."""
    L, R = L.double(), R.double()
    ql, rl = torch.linalg.qr(L)
    qr_, rr = torch.linalg.qr(R.T)
    uc, sc, _ = torch.linalg.svd(scale * (rl @ rr.T))
    k = min(int(k), sc.numel())
    if k <= 0:
        return Directions.empty(L.shape[0])
    return _pack(ql @ uc, sc, None, k, (L.shape[0], R.shape[1]))


def gains(norm: np.ndarray | None, offset: float, hidden: int) -> np.ndarray:
    """The final norm's elementwise gain (float64): w + offset, or ones when the model has no final-norm weight."""
    if norm is None:
        return np.ones(hidden)
    return np.asarray(norm, dtype=np.float64).reshape(-1) + float(offset)


class Candidates:
    """Running candidates for the largest and smallest entries of each column of Z = W_U @ G, fed row block by row
    block (`add`), in float32 or the block's dtype; `rows()` the candidate token ids per column (both ends)."""

    def __init__(self, cols: int, keep: int):
        self.cols, self.keep = cols, keep
        self.hi_v = self.hi_i = self.lo_v = self.lo_i = None

    def add(self, z: torch.Tensor, r0: int) -> None:
        """z: the block's scores [rows, cols] for tokens r0 .. r0 + rows."""
        n = min(self.keep, z.shape[0])
        hv, hi = torch.topk(z, n, dim=0)
        lv, li = torch.topk(z, n, dim=0, largest=False)
        hi, li = hi + r0, li + r0
        if self.hi_v is not None:
            hv, hi = torch.cat([self.hi_v, hv]), torch.cat([self.hi_i, hi])
            lv, li = torch.cat([self.lo_v, lv]), torch.cat([self.lo_i, li])
        n = min(self.keep, hv.shape[0])
        top = torch.topk(hv, n, dim=0)
        bot = torch.topk(lv, n, dim=0, largest=False)
        self.hi_v, self.hi_i = top.values, torch.gather(hi, 0, top.indices)
        self.lo_v, self.lo_i = bot.values, torch.gather(li, 0, bot.indices)

    def rows(self) -> list[np.ndarray]:
        """Per column, the sorted unique candidate token ids."""
        if self.hi_i is None:
            return [np.zeros(0, dtype=np.int64) for _ in range(self.cols)]
        both = torch.cat([self.hi_i, self.lo_i]).cpu().numpy()
        return [np.unique(both[:, c]) for c in range(self.cols)]


def finish(ids: np.ndarray, scores: np.ndarray, top: int = TOP) -> tuple[int, list[tuple[str, int, int, float]]]:
    """(sign, rows) of one direction from the exact scores of its candidate tokens `ids` (float64, before the sign):
    sign +1 or -1 makes the largest-|score| candidate positive (ties: the lower id); rows (promote|suppress, rank,
    token id, score after the sign), the `top` largest scores descending and the `top` smallest ascending (ties:
    the lower id first)."""
    ids = np.asarray(ids, dtype=np.int64)
    z = np.asarray(scores, dtype=np.float64)
    if ids.size == 0:
        return 1, []
    j = int(np.lexsort((ids, -np.abs(z)))[0])
    sign = -1 if z[j] < 0 else 1
    z = sign * z
    up = np.lexsort((ids, -z))[:top]
    down = np.lexsort((ids, z))[:top]
    rows = [("promote", r, int(ids[i]), float(z[i])) for r, i in enumerate(up)]
    rows += [("suppress", r, int(ids[i]), float(z[i])) for r, i in enumerate(down)]
    return sign, rows


def block_rows(hidden: int, target: int = 1 << 22) -> int:
    """Rows of the unembedding per streamed block (about `target` elements)."""
    return max(1, int(target // max(hidden, 1)))


def exact_scores(rows: np.ndarray, g: np.ndarray) -> np.ndarray:
    """z = rows @ g in float64 (rows: [n, hidden] token rows, g: [hidden, c] scaled directions)."""
    return np.asarray(rows, dtype=np.float64) @ np.asarray(g, dtype=np.float64)


def scaled(dirs: Directions, gain: np.ndarray) -> np.ndarray:
    """G = diag(gain) U diag(sigma): [hidden, k] float64, the residual-stream directions as the head reads them."""
    return gain[:, None] * dirs.u * dirs.sigma[None, :]


__all__ = ["Directions", "top_directions", "factored_directions", "gains", "Candidates", "finish", "block_rows",
           "exact_scores", "scaled", "TOP", "CANDIDATES"]
