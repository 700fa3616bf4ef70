"""Where an update sits, computed in the cheap pass: the hooks `scan.jobs.cheap.run_job` and `scan.jobs.cheap.tensor_records` call.

- `start(job)`: the per-part state (None when `DiffOptions.where` is off or the tensor is not 2-D);
- `kernel_sums(job, raw0, raws, part, hists)`: on the C kernel, one block's cheap sums and its row/column
  reductions in one pass (`kernel.fused.stats_rowcol`, `kernel.fused.stats_heads`) for every run, and the per-head dot
  products of every run pair when the tensor has heads (`plan.TensorSpec.heads`);
- `block(job, w0, ws, part)`: the same reductions in torch (`metrics.concentration.block`: the reference, and
  the CUDA path);
- `finish(spec, parts, records)`: adds the concentration columns to each run's record and returns the rows of
  the `heads`, `pairs_heads` and `neurons` tables (docs/metrics.md, "Where an update sits").

Adapter runs (factored updates, docs/adapters.md) get none of these: their rows and columns are left null.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from updelta.metrics import concentration as conc
from updelta.scan.jobs import kernel
from updelta.scan.jobs.read import raw_to_torch

TABLES = ("heads", "pairs_heads", "neurons")


@dataclass
class WherePart:
    pos: int  # flat index of the next block
    top: int  # neurons / tokens kept per tensor (DiffOptions.top_neurons)
    runs: dict[str, conc.AxisBlocks]
    pairs: dict[tuple[str, str], list] = field(default_factory=dict)


def start(job) -> WherePart | None:
    t = job.tensor
    if not job.opts.where or not conc.applies(t.shape):
        return None
    pairs = {p: [] for p in t.pairs} if t.heads is not None else {}
    return WherePart(job.start, int(job.opts.top_neurons), {s.run: conc.AxisBlocks() for s in t.sides}, pairs)


def kernel_sums(job, raw0, raws: dict, part, hists: dict) -> dict | None:
    """One block of a 2-D tensor under `where`, on the C kernel: every run's cheap sums (what `kernel.stats`
    returns, bit for bit) and its row/column reductions from one pass over the block (`kernel.fused.stats_rowcol`,
    or `kernel.fused.stats_heads` for a tensor with heads), and the per-head dot products of every run pair. Returns
    {run: sums}, or None when the block has no where work (the caller then calls `kernel.stats`)."""
    st = part.where
    if st is None:
        return None

    t, o = job.tensor, job.opts
    axis = t.heads.axis if t.heads is not None else None
    shape = (int(t.shape[0]), int(t.shape[1]))
    dtypes = {s.run: s.loc.dtype for s in t.sides}
    a, ka = kernel.kernel_input(raw0, t.base.dtype)
    n, cols = int(a.size), shape[1]
    r0, nrows = st.pos // cols, (st.pos + n - 1) // cols - st.pos // cols + 1
    sums = {}
    for r, x in raws.items():
        b, kb = kernel.kernel_input(x, dtypes[r])
        if axis is None:
            rows, col = np.zeros(nrows), np.zeros(cols)
            sums[r] = kernel.stats_rowcol(a, ka, b, kb, o.atol, o.eta, hists.get(r), st.pos, cols, rows, col)
            st.runs[r].rows.append((r0, {"ss_delta": rows}))
            st.runs[r].cols.append({"ss_delta": col})
            continue
        rs, cs = np.zeros((6, nrows)), np.zeros((6, cols))
        sums[r] = kernel.stats_heads(a, ka, b, kb, o.atol, o.eta, hists.get(r), st.pos, cols, axis, rs, cs)
        rows, col = {"ss_delta": rs[0]}, {"ss_delta": cs[0]}
        src, dst = (rs, rows) if axis == 0 else (cs, col)
        for i, k in enumerate(conc.HEAD_STATS[1:], 1):
            dst[k] = src[i] if k == "ss_base" else src[i].astype(np.int64)
        st.runs[r].rows.append((r0, rows))
        st.runs[r].cols.append(col)
    if st.pairs:
        t0 = raw_to_torch(raw0, t.base.dtype)
        dd = {r: conc._masked(t0, raw_to_torch(x, dtypes[r]))[3] for r, x in raws.items()}
        for (ra, rb), out in st.pairs.items():
            conc.pair_block(dd[ra], dd[rb], st.pos, shape, axis, out)
    st.pos += n
    return sums


def block(job, w0, ws: dict, part) -> None:
    """Row/column reductions of one block in torch (the reference of `kernel_sums`, and the CUDA path): `w0`,
    `ws[run]`: the block's values as torch tensors (any dtype)."""
    st = part.where
    if st is None:
        return
    t, o = job.tensor, job.opts
    axis = t.heads.axis if t.heads is not None else None
    shape = (int(t.shape[0]), int(t.shape[1]))
    dd = {r: conc.block(w0, w, st.pos, shape, axis, o.atol, o.eta, st.runs[r]) for r, w in ws.items()}
    for (ra, rb), out in st.pairs.items():
        conc.pair_block(dd[ra], dd[rb], st.pos, shape, axis, out)
    st.pos += int(w0.numel())


def finish(t, parts: list, records: list[dict]) -> dict[str, list[dict]]:
    """Concentration columns into `records` (one per run, in side order); rows of the where tables."""
    states = [p.where for p in parts if getattr(p, "where", None) is not None]
    out: dict[str, list[dict]] = {k: [] for k in TABLES}
    if not states:
        return out
    R, C = int(t.shape[0]), int(t.shape[1])
    top = states[0].top
    info, hs = t.info, t.heads
    ids = {"layer": info.layer, "module": info.module, "name": t.name}
    per_axis = {}
    for rec in records:
        r = rec["run"]
        rows = [b for st in states for b in st.runs[r].rows]
        cols = [b for st in states for b in st.runs[r].cols]
        e, f = conc.rows_total(rows, "ss_delta", R), conc.cols_total(cols, "ss_delta", C)
        if t.transposed:  # stored [in, out]: logical rows are stored columns
            e, f = f, e
        rec.update(conc.concentration(e, f))
        logical = (e.size, f.size)
        ax = conc.neuron_axis(info.component, logical)
        if ax is not None and info.tower is None:
            kind = "token" if info.component in ("embed", "head") else "neuron"
            x = e if ax == "row" else f
            for rank, (i, en, sh) in enumerate(conc.top_rows(x, top)):
                out["neurons"].append({"run": r, **ids, "component": info.component, "kind": kind, "axis": ax,
                                       "index": i, "rank": rank, "energy": en, "energy_share": sh, "token": None})
        if hs is not None:
            if hs.axis == 0:
                per = {k: conc.rows_total(rows, k, R) for k in conc.HEAD_STATS}
            else:
                per = {k: conc.cols_total(cols, k, C) for k in conc.HEAD_STATS}
            per_axis[r] = per
            for h in conc.head_rows(hs, per, float(e.sum())):
                out["heads"].append({"run": r, **ids, **h})
    if hs is not None:
        n = R if hs.axis == 0 else C
        for (ra, rb) in t.pairs:
            blocks = [b for st in states for b in st.pairs[(ra, rb)]]
            dot = conc.rows_total(blocks, "dot", n) if hs.axis == 0 else conc.cols_total(blocks, "dot", n)
            for h in conc.pair_head_rows(hs, dot, per_axis[ra]["ss_delta"], per_axis[rb]["ss_delta"]):
                out["pairs_heads"].append({"run_a": ra, "run_b": rb, **ids, **h})
    return out
