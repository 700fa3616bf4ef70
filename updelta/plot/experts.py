"""The layer x expert heatmap of a mixture-of-experts model (docs/experts.md)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from updelta.errors import UpdeltaError
from updelta.plot import common as C
from updelta.plot.grids import annotate_cells, color_norm
from updelta.tables.result import expert_table

KEYS = ["layer", "expert"]


def _expert_rows(data, meta: dict | None) -> tuple[pd.DataFrame, dict]:
    """(one row per run, layer and expert, meta) from a `Result`, its `tensors` or its `experts` table."""

    if isinstance(data, pd.DataFrame):
        df, meta = data, dict(meta or {})
    elif hasattr(data, "tensors") and hasattr(data, "meta"):
        df, meta = data.experts, dict(meta if meta is not None else data.meta or {})
    else:
        raise UpdeltaError(f"expected a updelta Result or a pandas DataFrame, got {type(data).__name__}")
    if "name" in df.columns:  # a per-tensor table: sum each expert's projections
        df = expert_table(C.with_run(df))
    return C.with_run(df), meta


def experts_heatmap(data, metric: str = "rel_delta", *, meta: dict | None = None, runs=None,
                    log: bool | None = None, annotate: bool | None = None) -> Figure:
    """Layers down, routed experts across, one panel per run: `metric` of each expert (all its projections,
    figures from the summed raw sums, as `Result.experts`).

    `data`: a `Result`, its `experts` table or its `tensors` (then pass `meta` for titles). `log`: colour
    scale; None picks log for positive metrics spanning >= 100x. `annotate`: values in the cells; None
    does so when a panel is at most 24 layers x 16 experts. Grey cells: no value (the expert is absent
    from that layer, or the metric is undefined). A model without routed experts is an error."""
    df, meta = _expert_rows(data, meta)
    if df.empty or not all(k in df.columns for k in KEYS) or not df["expert"].notna().any():
        raise UpdeltaError("experts heatmap: the result has no routed-expert rows (column expert is empty): "
                           "not a mixture-of-experts model, or a family without an expert pattern")
    if metric not in df.columns:
        known = [c for c in df.columns if c not in ("run", *KEYS) and pd.api.types.is_numeric_dtype(df[c])]
        raise UpdeltaError(f"metric {metric!r} is not a column of the experts table; choose one of: "
                           f"{', '.join(known[:25])}")
    df = C.select_runs(df, runs)
    df = df[df["expert"].notna() & df["layer"].notna()]
    if df.empty:
        raise UpdeltaError(f"experts heatmap of {metric}: no expert rows for the runs chosen")
    df = df.assign(_panel=C.series_key(df), _v=C.numeric(df[metric]), layer=df["layer"].astype("int64"),
                   expert=df["expert"].astype("int64"))
    panels = C.run_order(df, meta)
    layers = sorted(df["layer"].unique())
    experts = sorted(df["expert"].unique())
    li = {v: i for i, v in enumerate(layers)}
    ei = {v: i for i, v in enumerate(experts)}
    pi = {p: i for i, p in enumerate(panels)}
    arr = np.full((len(panels), len(layers), len(experts)), np.nan)
    for p, lay, e, v in zip(df["_panel"], df["layer"], df["expert"], df["_v"]):
        arr[pi[p], li[lay], ei[e]] = v
    L, E, P = len(layers), len(experts), len(panels)
    notes = []
    norm, cmap, is_log, scale_note = color_norm(arr, metric, log)
    if scale_note:
        notes.append(scale_note)
    if np.isnan(arr).any():
        notes.append("grey: no value (expert absent from the layer, or metric undefined)")
    annotate = (L <= 24 and E <= 16) if annotate is None else annotate

    cell = (0.5, 0.3) if annotate else (min(0.3, max(0.05, 8.0 / E)), min(0.3, max(0.1, 9.0 / L)))
    pad = (0.8, 1.0)
    frame = (1.6, 1.0 + 0.18 * len(notes))
    ncol, nrow, cell_w, cell_h = C.facet_grid(P, E, L, cell, pad, frame)
    if cell_w < 0.45 or cell_h < 0.22:
        annotate = False
    note = "\n".join(notes) if notes else None
    width, height = C.capped(max(5.0, ncol * (E * cell_w + pad[0]) + frame[0]),
                             nrow * (L * cell_h + pad[1]) + frame[1])
    with C.style():
        fig = C.new_figure(width, height)
        axes = fig.subplots(nrow, ncol, squeeze=False, sharex=True, sharey=True)
        ystep = C.thin_ticks(L, cell_h * L)
        xstep = C.thin_ticks(E, cell_w * E)
        im = None
        for k, ax in enumerate(axes.flat):
            if k >= P:
                ax.set_visible(False)
                continue
            im = ax.imshow(np.ma.masked_invalid(arr[k]), cmap=cmap, norm=norm, aspect="auto",
                           interpolation="nearest")
            ax.set_title(panels[k], fontsize=9.5)
            for s in ax.spines.values():
                s.set_visible(False)
            ax.set_yticks(range(0, L, ystep), [str(layers[i]) for i in range(0, L, ystep)])
            ax.set_xticks(range(0, E, xstep), [str(experts[i]) for i in range(0, E, xstep)])
            ax.tick_params(length=2)
            if annotate:
                annotate_cells(ax, arr[k], norm, cmap, fontsize=7)
            if k % ncol == 0:
                ax.set_ylabel("layer")
            ax.tick_params(labelbottom=True)  # expert numbers under every panel
            if k + ncol >= P:
                ax.set_xlabel("expert")
        fig.colorbar(im, ax=[a for a in axes.flat if a.get_visible()], aspect=20,
                     shrink=min(1.0, 4.0 / max(nrow * (L * cell_h + pad[1]), 1e-6)),
                     label=C.metric_label(metric, meta) + (", log scale" if is_log else ""))
        what = C.metric_label(metric, meta, long=True)
        C.titles(fig, f"{metric} ({what}) per layer and routed expert", meta, runs=C.runs_in(df, meta), note=note)
    return fig
