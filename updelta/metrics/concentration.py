"""Where an update sits: row and column energies, attention heads, neurons and token rows (docs/metrics.md,
"Where an update sits").

For a 2-D update D [out, in] (the logical orientation; GPT-2 Conv1D weights are stored transposed):
- row energies e_i = ||D[i, :]||^2 and column energies f_j = ||D[:, j]||^2, float64 sums of the same pass that
  computes the cheap metrics (no extra read): each block of elements [s, s + n) of the stored, row-major tensor
  covers rows s // C .. (s + n - 1) // C, and its squares are reduced per row and per column (`block`);
- concentration figures of e (and f): `row_top1_share`, `row_top10_share` (the largest ceil(p m) energies over
  their total, p = 1%, 10%; uniform -> p), `row_gini` (Gini of e: 0 uniform, (m - 1) / m when one row holds
  all), `rows_for_90` (fewest rows holding 90%), and the `col_` figures of f (`concentration`);
- attention heads (`heads.HeadSplit`): the cheap sums (||D||^2, ||W0||^2, finite pairs, the three sparsity
  counts) per row or column along the head axis, summed over each head's range (`head_rows`), and the
  dot products of two runs' updates for the per-head cosine (`pair_head_rows`);
- neurons and tokens (`top_rows`): the rows (or, for down projections, columns: the larger axis of an MLP
  weight is its neuron axis) with the largest energy shares; for embeddings and an untied head, rows are tokens.

Every per-block array is kept and added in block order when the tensor is finished, so the figures do not
depend on how the plan splits a tensor into parts or on the executor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from updelta.metrics.registry import metric

WHERE = "metrics.md, Where an update sits"
HEAD_STATS = ("ss_delta", "ss_base", "n_compared", "n_eq", "n_le_atol", "n_le_rtol")
SHARES = (0.01, 0.10)


@dataclass
class AxisBlocks:
    """Per-block reductions of one run's update on one cheap job: (first stored row, {stat: per-row array}) and
    {stat: per-column array}, one entry per block, in block order."""

    rows: list[tuple[int, dict[str, np.ndarray]]] = field(default_factory=list)
    cols: list[dict[str, np.ndarray]] = field(default_factory=list)


def applies(shape: tuple[int, ...]) -> bool:
    """Row/column energies are kept for 2-D tensors with more than one row and column."""
    return len(shape) == 2 and shape[0] > 1 and shape[1] > 1


def _pieces(start: int, n: int, cols: int):
    """(first row, head, full rows, tail) of a block of `n` elements from flat index `start`: `head` elements
    finish a row begun before the block, then `full` whole rows, then `tail` elements of a last row."""
    off = start % cols
    head = min(n, (cols - off) % cols)
    full = (n - head) // cols
    return start // cols, off, head, full, n - head - full * cols


def _reduce(x: torch.Tensor, start: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """(per-row sums of the rows the block touches, per-column sums) of a flat block `x` (float64 or int64)."""
    n = x.numel()
    _, off, head, full, tail = _pieces(start, n, cols)
    mid = x[head:head + full * cols].view(full, cols)
    rows = [x[:head].sum().reshape(1)] if head else []
    rows.append(mid.sum(1))
    if tail:
        rows.append(x[n - tail:].sum().reshape(1))
    col = mid.sum(0)
    if head:
        col[off:off + head] += x[:head]
    if tail:
        col[:tail] += x[n - tail:]
    return torch.cat(rows).cpu().numpy(), col.cpu().numpy()


def _masked(w0: torch.Tensor, w1: torch.Tensor):
    dt = torch.float64 if torch.float64 in (w0.dtype, w1.dtype) else torch.float32
    a, b = w0.reshape(-1).to(dt), w1.reshape(-1).to(dt)
    m = torch.isfinite(a) & torch.isfinite(b)
    zero = torch.zeros((), dtype=dt, device=a.device)
    a, b = torch.where(m, a, zero), torch.where(m, b, zero)
    d = b - a
    dd = torch.where(torch.isfinite(d), d.double(), b.double() - a.double())
    return a, b, d, dd, m


def block(w0: torch.Tensor, w1: torch.Tensor, start: int, shape: tuple[int, int], head_axis: int | None,
          atol: float, eta: float, out: AxisBlocks) -> torch.Tensor | None:
    """Add one block's row and column reductions to `out`. `w0`, `w1`: the block's elements (flat, any float
    dtype, any device) from flat index `start` of a stored [R, C] tensor; `head_axis` (0 rows, 1 columns, None)
    also keeps the per-head sums along that axis. Returns D in float64 when the caller needs it for pair sums
    (head tensors), else None."""
    cols = shape[1]
    r0 = start // cols
    if head_axis is None:
        d = w1.reshape(-1).to(torch.float32 if w1.dtype != torch.float64 else w1.dtype) - w0.reshape(-1).to(
            torch.float32 if w0.dtype != torch.float64 else w0.dtype)
        e = d.double().square_()
        rows, col = _reduce(e, start, cols)
        if not (np.isfinite(rows).all()):  # non-finite values or a float32 overflow: the masked path
            _, _, _, dd, _ = _masked(w0, w1)
            rows, col = _reduce(dd * dd, start, cols)
        out.rows.append((r0, {"ss_delta": rows}))
        out.cols.append({"ss_delta": col})
        return None
    a, b, d, dd, m = _masked(w0, w1)
    ad = d.abs()
    stats = {"ss_delta": dd * dd, "ss_base": a.double().square(), "n_compared": m.long(),
             "n_eq": (m & (a == b)).long(), "n_le_atol": (m & (ad <= atol)).long(),
             "n_le_rtol": (m & (ad <= eta * torch.maximum(a.abs(), b.abs()))).long()}
    rows, cols_ = {}, {}
    for k, v in stats.items():
        r, c = _reduce(v, start, cols)
        if k == "ss_delta" or head_axis == 0:
            rows[k] = r
        if k == "ss_delta" or head_axis == 1:
            cols_[k] = c
    out.rows.append((r0, rows))
    out.cols.append(cols_)
    return dd


def pair_block(da: torch.Tensor, db: torch.Tensor, start: int, shape: tuple[int, int], head_axis: int,
               out: list) -> None:
    """Per-row (head axis 0) or per-column dot products of two runs' float64 updates of one block."""
    rows, col = _reduce(da * db, start, shape[1])
    out.append((start // shape[1], rows) if head_axis == 0 else col)


def rows_total(blocks: list[tuple[int, dict]], stat: str, n: int) -> np.ndarray:
    """Per-row totals of `stat` over blocks (in the given order)."""
    dt = np.float64 if stat.startswith("ss") or stat == "dot" else np.int64
    out = np.zeros(n, dtype=dt)
    for r0, arrs in blocks:
        a = arrs[stat] if isinstance(arrs, dict) else arrs
        out[r0:r0 + a.size] += a
    return out


def cols_total(blocks: list, stat: str, n: int) -> np.ndarray:
    dt = np.float64 if stat.startswith("ss") or stat == "dot" else np.int64
    out = np.zeros(n, dtype=dt)
    for arrs in blocks:
        out += arrs[stat] if isinstance(arrs, dict) else arrs
    return out


# ---- concentration figures --------------------------------------------------------------------------
def top_share(e: np.ndarray, p: float) -> float:
    """Share of sum(e) held by the largest ceil(p * m) entries of e (m = len(e)); NaN when e sums to 0."""
    return _top_share(np.sort(np.asarray(e, dtype=np.float64)), p)


def gini(e: np.ndarray) -> float:
    """Gini coefficient of the non-negative energies e: 0 when uniform, (m - 1) / m when one entry holds all."""
    return _gini(np.sort(np.asarray(e, dtype=np.float64)))


def count_for(e: np.ndarray, q: float = 0.9) -> int | None:
    """Fewest entries of e whose sum reaches q of the total (a relative 1e-12 allowance for rounding)."""
    return _count_for(np.sort(np.asarray(e, dtype=np.float64)), q)


# The same three on e sorted ascending (float64), so that `concentration` sorts each axis once.
def _top_share(s: np.ndarray, p: float) -> float:
    tot = s.sum()
    if s.size == 0 or not tot > 0:
        return math.nan
    k = max(1, math.ceil(p * s.size - 1e-9))
    return float(s[::-1][:k].sum() / tot)


def _gini(s: np.ndarray) -> float:
    m, tot = s.size, s.sum()
    if m == 0 or not tot > 0:
        return math.nan
    i = np.arange(1, m + 1, dtype=np.float64)
    return float(max(0.0, 2.0 * (i * s).sum() / (m * tot) - (m + 1) / m))


def _count_for(s: np.ndarray, q: float) -> int | None:
    tot = s.sum()
    if s.size == 0 or not tot > 0:
        return None
    c = np.cumsum(s[::-1])
    return int(min(np.searchsorted(c, q * tot * (1 - 1e-12)) + 1, s.size))


def concentration(e: np.ndarray, f: np.ndarray) -> dict:
    """The concentration columns of one tensor from its row energies e and column energies f."""
    out = {}
    for axis, x in (("row", e), ("col", f)):
        s = np.sort(np.asarray(x, dtype=np.float64))
        out[f"{axis}_top1_share"] = _top_share(s, SHARES[0])
        out[f"{axis}_top10_share"] = _top_share(s, SHARES[1])
        out[f"{axis}_gini"] = _gini(s)
        out[f"{axis}s_for_90"] = _count_for(s, 0.9)
    return out


def energies(w0: torch.Tensor, w1: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(e, f): row and column energies of D = W1 - W0 of a whole 2-D [out, in] tensor, float64 (the definition the
    streamed sums are checked against)."""
    d = w1.double() - w0.double()
    e = d.square()
    return e.sum(1).numpy(), e.sum(0).numpy()


def _define(name: str, axis: int, fn, what: str) -> None:
    def definition(w0: torch.Tensor, w1: torch.Tensor):
        return fn(energies(w0, w1)[axis])
    definition.__doc__ = f"{what} of the {'row' if axis == 0 else 'column'} energies of D = W1 - W0 ([out, in])."
    metric(name, "concentration", WHERE)(definition)


for _ax, _p in ((0, "row"), (1, "col")):
    _define(f"{_p}_top1_share", _ax, lambda e: top_share(e, 0.01), "Share of ||D||_F^2 in the top 1%")
    _define(f"{_p}_top10_share", _ax, lambda e: top_share(e, 0.10), "Share of ||D||_F^2 in the top 10%")
    _define(f"{_p}_gini", _ax, gini, "Gini coefficient")
    _define(f"{_p}s_for_90", _ax, count_for, "Fewest entries holding 90% of ||D||_F^2")


def neuron_axis(component: str, logical: tuple[int, int]) -> str | None:
    """Which logical axis of a weight holds its neurons or tokens: "row", "col" or None (not reported).
    MLP weights: the larger axis (gate/up rows, down columns); embeddings and heads: rows (tokens)."""
    if component == "mlp":
        return "col" if logical[1] > logical[0] else "row"
    if component in ("embed", "head"):
        return "row"
    return None


def top_rows(x: np.ndarray, n: int) -> list[tuple[int, float, float]]:
    """(index, energy, share) of the `n` largest non-zero entries of x, largest first (ties: lower index first)."""
    tot = float(x.sum())
    if not tot > 0 or n <= 0:
        return []
    if n < x.size:  # the candidates: entries at least the n-th largest (ties included), in index order
        cand = np.flatnonzero(x >= np.partition(x, x.size - n)[x.size - n])
        idx = cand[np.argsort(-x[cand], kind="stable")][:n]
    else:
        idx = np.argsort(-x, kind="stable")[:n]
    return [(int(i), float(x[i]), float(x[i] / tot)) for i in idx if x[i] > 0]


def head_rows(split, per_axis: dict[str, np.ndarray], total_ss: float) -> list[dict]:
    """One dict per (part, head) of a tensor: the summed cheap sums over the head's range and its figures."""
    out = []
    for part, h, s, e in split.ranges:
        sums = {k: per_axis[k][s:e].sum() for k in HEAD_STATS}
        n = int(sums["n_compared"])
        ss, sb = float(sums["ss_delta"]), float(sums["ss_base"])
        row = {"part": part, "head": int(h), "delta_fro": math.sqrt(ss), "base_fro": math.sqrt(sb),
               "rel_delta": math.sqrt(ss) / math.sqrt(sb) if sb > 0 else math.nan}
        for c, k in (("exact", "n_eq"), ("atol", "n_le_atol"), ("rtol", "n_le_rtol")):
            row[f"sparsity_{c}"] = int(sums[k]) / n if n else math.nan
        row["energy_share"] = ss / total_ss if total_ss > 0 else math.nan
        row.update({"ss_delta": ss, "ss_base": sb, "n_compared": n})
        out.append(row)
    return out


def pair_head_rows(split, dot: np.ndarray, ss_a: np.ndarray, ss_b: np.ndarray) -> list[dict]:
    out = []
    for part, h, s, e in split.ranges:
        d, a, b = float(dot[s:e].sum()), float(ss_a[s:e].sum()), float(ss_b[s:e].sum())
        den = math.sqrt(a) * math.sqrt(b)
        out.append({"part": part, "head": int(h), "delta_cos": d / den if den > 0 else math.nan,
                    "dot": d, "ss_delta_a": a, "ss_delta_b": b})
    return out
