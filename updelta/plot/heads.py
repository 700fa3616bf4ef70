"""The layer x head heatmap of attention weights (`Result.heads`, docs/metrics.md "Where an update sits")."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from updelta.errors import UpdeltaError
from updelta.plot import common as C
from updelta.plot.grids import color_norm

METRICS = ("energy_vs_even", "energy_share", "delta_fro", "base_fro", "rel_delta", "sparsity_exact", "sparsity_atol",
           "sparsity_rtol")
LABELS = {"energy_share": "share of the module's update energy",
          "energy_vs_even": "share of the module's update energy x heads (1 = an even share)",
          "delta_fro": "||D_h||_F (weight units)",
          "base_fro": "||W0_h||_F (weight units)", "rel_delta": "||D_h||_F / ||W0_h||_F (ratio)"}
PART_ORDER = {"q": 0, "k": 1, "v": 2, "o": 3}


def heads_heatmap(data, metric: str = "energy_vs_even", *, meta: dict | None = None, runs=None,
                  log: bool | None = None) -> Figure:
    """One panel per run (rows) and attention module part (columns: q, k, v of each projection, then o): layers
    down, heads across (KV heads for k and v under grouped-query attention), one colour scale shared by every
    panel. `data`: a `Result` or its `heads` table (then pass `meta`). `energy_vs_even` is `energy_share` times the
    part's number of heads, so that q (many heads) and k, v (few KV heads) share one scale: 1 is an even spread.
    Runs whose attention weights did not change at all are named once in a note instead of drawn."""
    if isinstance(data, pd.DataFrame):
        df, meta = data, dict(meta or {})
    elif hasattr(data, "heads"):
        df, meta = data.heads, dict(meta if meta is not None else data.meta or {})
    else:
        raise UpdeltaError(f"expected a updelta Result or a pandas DataFrame, got {type(data).__name__}")
    if df is None or df.empty:
        note = ((meta.get("pairing") or {}).get("heads") or {}).get("skipped")
        raise UpdeltaError("heads heatmap: the result has no per-head rows" + (f" ({note})" if note else
                           " (a result saved as one .parquet file keeps only the per-tensor table: save a folder)"))
    if metric not in METRICS:
        raise UpdeltaError(f"heads heatmap: metric {metric!r}: choose one of {', '.join(METRICS)}")
    df = C.select_runs(C.with_run(df), runs)
    df = df[df["layer"].notna()]
    if df.empty:
        raise UpdeltaError("heads heatmap: no head rows for the runs chosen")
    df = df.assign(layer=df["layer"].astype("int64"), head=df["head"].astype("int64"),
                   _col=df["module"].astype(str) + " " + df["part"].astype(str))
    if metric == "energy_vs_even":
        n = df.groupby(["run", "name", "part"])["head"].transform("nunique")
        df = df.assign(_v=C.numeric(df["energy_share"]) * n)
    else:
        df = df.assign(_v=C.numeric(df[metric]))
    moved = C.numeric(df["delta_fro"]).fillna(0).gt(0).groupby(df["run"].astype(str)).any()
    still = [r for r in C.run_order(df, meta) if not moved.get(r, False)]
    df = df[~df["run"].astype(str).isin(still)]
    title = f"{metric} per layer and attention head (one colour scale for every run)"
    if df.empty:
        return C.note_figure(title, f"{', '.join(still)}: no attention weight changed (every head's update is 0)",
                             meta, runs=still)
    runs_ = C.run_order(df, meta)
    cols = sorted(df["_col"].unique(), key=lambda c: (PART_ORDER.get(c.split(" ")[1], 9), c))
    layers = sorted(df["layer"].unique())
    li = {v: i for i, v in enumerate(layers)}
    nheads = {c: int(df.loc[df["_col"] == c, "head"].max()) + 1 for c in cols}
    arrs = {}
    for (r, c), g in df.groupby(["run", "_col"], sort=False):
        a = np.full((len(layers), nheads[c]), np.nan)
        for lay, h, v in zip(g["layer"], g["head"], g["_v"]):
            a[li[lay], h] = v
        arrs[(r, c)] = a
    allv = np.concatenate([a.ravel() for a in arrs.values()])
    norm, cmap, is_log, scale_note = color_norm(allv, metric, log)
    R, K, L = len(runs_), len(cols), len(layers)
    widths = [max(1.2, 0.18 * nheads[c]) for c in cols]
    panel_h = min(min(0.25 * L, 4.0) + 0.6, (C.MAX_IN - 1.4) / max(R, 1))  # every run's row within MAX_PX
    notes = [n for n in (scale_note, "grey: undefined (the module did not change)" if np.isnan(allv).any() else None,
                         f"{', '.join(still)}: no attention weight changed, not drawn" if still else None) if n]
    with C.style():
        fig = C.new_figure(*C.capped(max(5.0, sum(widths) + 2.0), R * panel_h + 1.2 + 0.18 * len(notes)))
        axes = fig.subplots(R, K, squeeze=False, gridspec_kw={"width_ratios": widths}, sharey=True)
        im = None
        ystep = C.thin_ticks(L, max(panel_h - 0.6, 0.3))
        for i, r in enumerate(runs_):
            for j, c in enumerate(cols):
                ax = axes[i][j]
                a = arrs.get((r, c))
                if a is None:
                    ax.set_visible(False)
                    continue
                im = ax.imshow(np.ma.masked_invalid(a), cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
                for s in ax.spines.values():
                    s.set_visible(False)
                ax.set_yticks(range(0, L, ystep), [str(layers[k]) for k in range(0, L, ystep)])
                xs = C.thin_ticks(nheads[c], widths[j])
                ax.set_xticks(range(0, nheads[c], xs), [str(k) for k in range(0, nheads[c], xs)])
                ax.tick_params(length=2, labelsize=7)
                if i == 0:
                    ax.set_title(c, fontsize=9)
                if j == 0:
                    ax.set_ylabel(f"{r}\nlayer", fontsize=8.5)
                if i == R - 1:
                    ax.set_xlabel("KV head" if c.endswith((" k", " v")) else "head", fontsize=8)
        grid_h = R * panel_h
        fig.colorbar(im, ax=[a for a in axes.flat if a.get_visible()], shrink=min(1.0, 4.0 / max(grid_h, 1e-6)),
                     label=LABELS.get(metric, C.metric_label(metric, meta)) + (", log scale" if is_log else ""))
        C.titles(fig, title, meta, runs=runs_, note="\n".join(notes) or None)
    return fig
