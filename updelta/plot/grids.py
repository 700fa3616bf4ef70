"""Grid figures: the layer x module heatmap and the cross-run similarity matrix."""
from __future__ import annotations

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

from updelta.errors import UpdeltaError
from updelta.metrics import schema
from updelta.plot import common as C
from updelta.tables.aggregate import aggregate_pairs


def _pick_table(data, metric: str, meta: dict | None) -> tuple[pd.DataFrame, dict]:
    """The per-tensor table holding `metric`: `tensors`, else `pairs` (cross-run metrics)."""
    if isinstance(data, pd.DataFrame):
        df, meta = C.as_table(data, "tensors", meta)
    else:
        df, meta = C.as_table(data, "tensors", meta)
        if metric not in df.columns:
            pairs = data.pairs
            if metric in pairs.columns:
                df = pairs
    if metric not in df.columns:
        known = [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])
                 and (c not in schema.COLUMNS or schema.COLUMNS[c].kind in ("metric", "spectral"))]
        raise UpdeltaError(f"metric {metric!r} is not a column of the table; choose one of: {', '.join(known[:25])}")
    return df, meta


def column_key(c: tuple) -> tuple:
    comp, mod, par = c
    ci = C.COMPONENT_ORDER.index(comp) if comp in C.COMPONENT_ORDER else len(C.COMPONENT_ORDER)
    mi = C.MODULE_ORDER.index(mod) if mod in C.MODULE_ORDER else len(C.MODULE_ORDER)
    return (ci, mi, str(mod), par != "weight", str(par))


def column_label(c: tuple) -> str:
    _, mod, par = c
    s = C.SHORT.get(mod, mod[:-5] if str(mod).endswith("_proj") else str(mod))
    return s if par == "weight" else f"{s} {par}"


def _fmt(v: float) -> str:
    if not np.isfinite(v):
        return ""
    if v == 0:
        return "0"
    return f"{v:.2g}" if abs(v) < 1000 else f"{v:.1e}"


def _text_color(rgba) -> str:
    r, g, b = rgba[:3]
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.45 else "white"


def color_norm(values: np.ndarray, metric: str, log: bool | None, fixed: tuple[float, float] | None = None):
    """(norm, cmap, is_log, note) for `values`, colour-blind-safe and centred at 0 for signed metrics."""
    v = values[np.isfinite(values)]
    signed = metric in C.SIGNED or (v.size > 0 and v.min() < 0)
    use_log = C.auto_log(values, metric) if log is None else bool(log)
    note = None
    if use_log and (signed or not (v > 0).any()):
        note = f"log scale not possible for {metric} (values ≤ 0); linear scale used"
        use_log = False
    if signed:
        cmap = mpl.colormaps[C.DIV_CMAP]
        m = fixed[1] if fixed else (float(np.abs(v).max()) if v.size else 1.0)
        norm = Normalize(-(m or 1.0), m or 1.0)
    elif use_log:
        cmap = mpl.colormaps[C.SEQ_CMAP]
        pos = v[v > 0]
        lo, hi = float(pos.min()), float(pos.max())
        norm = LogNorm(lo if hi > lo else lo / 2, hi if hi > lo else hi * 2)
        if (v <= 0).any():
            note = "grey cells on the log scale include values ≤ 0"
    else:
        cmap = mpl.colormaps[C.SEQ_CMAP]
        lo, hi = fixed if fixed else ((float(v.min()), float(v.max())) if v.size else (0.0, 1.0))
        norm = Normalize(lo, hi if hi > lo else lo + (abs(lo) or 1.0) * 1e-6)
    return norm, cmap.with_extremes(bad=C.NAN_COLOR), use_log, note


def annotate_cells(ax, arr: np.ndarray, norm, cmap, fontsize: float, extra: np.ndarray | None = None) -> None:
    for i in range(arr.shape[0]):
        for j in range(arr.shape[1]):
            v = arr[i, j]
            txt = _fmt(v) if extra is None or not extra[i, j] else extra[i, j]
            if not txt:
                continue
            color = _text_color(cmap(norm(v))) if np.isfinite(v) else "#333333"
            ax.text(j, i, txt, ha="center", va="center", fontsize=fontsize, color=color)


def heatmap(data, metric: str = "rel_delta", *, meta: dict | None = None, runs=None,
            params: tuple[str, ...] | None = ("weight",), log: bool | None = None,
            annotate: bool | None = None) -> Figure:
    """Layers down, modules across, one panel per run (or per pair of runs for cross-run metrics): small
    multiples on a grid that fits 3000 px (`MAX_PX`) at 150 dpi at any number of runs and layers, module names
    under every panel, one colour scale and one colour bar of normal height for all of them.

    `data`: a `Result` or its `tensors` (or `pairs`) DataFrame (then pass `meta` for titles).
    `params`: which parameter kinds to show (`("weight", "bias")` adds bias columns; None: all).
    `log`: colour scale; None picks log for positive metrics spanning >= 100x. `annotate`: print the
    values in the cells; None does so when the cells are large enough to read (about 24 layers x 12 modules).
    Tensors without a layer (embedding, final norm, head) are left out (counted in the footnote). Runs whose
    every tensor is bit-identical to the base get no panel: the footnote names them once.
    All panels share one colour scale; grey cells have no value.
    """
    df, meta = _pick_table(data, metric, meta)
    C.need(df, ["layer", "component", "module"], "heatmap", "pass a per-tensor table (Result.tensors or .pairs)")
    df = C.with_run(C.select_runs(df, runs))
    present = set(C.runs_in(df, meta))
    same = [r for r in C.unchanged_in(data, df) if r in present]  # judged on every tensor, before the filters
    if params is not None and "param" in df.columns:
        params = (params,) if isinstance(params, str) else tuple(params)
        df = df[df["param"].isin(params)]
    if "param" not in df.columns:
        df = df.assign(param="weight")
    notes = []
    if "run" in df.columns:
        df = df[~df["run"].astype(str).isin(same)]
    else:  # a pair with an unchanged run has no update to compare: left out too
        df = df[~df["run_a"].astype(str).isin(same) & ~df["run_b"].astype(str).isin(same)]
    if same:
        notes.append(C.unchanged_note(same))
    no_layer = df[df["layer"].isna()]
    if len(no_layer):
        n = no_layer["name"].nunique() if "name" in no_layer.columns else len(no_layer)
        notes.append(f"{n} tensor(s) without a layer (embedding, final norm, head) not shown")
    df = df[df["layer"].notna()].copy()
    what = C.metric_label(metric, meta, long=True)
    kinds = ", ".join(params) if params else "all parameters"
    title = f"{metric} ({what}) per layer and module; {kinds}"
    if df.empty and same:
        return C.note_figure(title, C.unchanged_note(same).replace(", not drawn", ""), meta, runs=same)
    if df.empty:
        raise UpdeltaError(f"heatmap of {metric}: no per-layer tensors in the table (after the run/param filters)")
    pair = "run" not in df.columns
    panel_cols = list(C.PAIR_KEYS) if pair else ["run"]
    keys = panel_cols + ["layer", "component", "module", "param"]
    df, agg_note = C.aggregate_cells(df, keys, metric)
    df, na_note = C.sparsity_na(df, metric)  # adapter cells without counts: not drawn, said in the note
    agg_note = "; ".join(x for x in (agg_note, na_note) if x) or None
    if agg_note:
        notes.append(agg_note)
    df = df.assign(_panel=C.series_key(df), _v=C.numeric(df[metric]), layer=df["layer"].astype("int64"))
    panels = C.run_order(df, meta)
    layers = sorted(df["layer"].unique())
    cols = sorted({(c, m, p) for c, m, p in zip(df["component"], df["module"], df["param"])}, key=column_key)
    li = {v: i for i, v in enumerate(layers)}
    ci = {v: i for i, v in enumerate(cols)}
    arr = np.full((len(panels), len(layers), len(cols)), np.nan)
    pi = {p: i for i, p in enumerate(panels)}
    for p, l, c, m, pr, v in zip(df["_panel"], df["layer"], df["component"], df["module"], df["param"], df["_v"]):
        arr[pi[p], li[l], ci[(c, m, pr)]] = v
    empty = np.isnan(arr).all(axis=(0, 1))
    if empty.any() and not empty.all():
        names = sorted({column_label(c) for c, e in zip(cols, empty) if e})
        why = ("adapter factors have no sparsity counts" if metric.startswith("sparsity_") else
               "e.g. 1-D tensors have no spectrum")
        notes.append(f"no {metric} for {', '.join(names)} ({why}): columns not shown")
        arr = arr[:, :, ~empty]
        cols = [c for c, e in zip(cols, empty) if not e]
    L, K, P = len(layers), len(cols), len(panels)
    norm, cmap, is_log, scale_note = color_norm(arr, metric, log)
    if scale_note:
        notes.append(scale_note)
    if np.isnan(arr).any():
        notes.append("grey: no value (tensor absent, or metric undefined, e.g. W0 = 0)")
    want_ann = (L <= 24 and K <= 12) if annotate is None else annotate
    cell = (0.62, 0.3) if want_ann else (0.42, min(0.3, max(0.1, 7.0 / L)))
    label_w = max(len(column_label(c)) for c in cols) * 7 * 0.6 / 72  # module names run upwards: their height
    pad = (0.45, 0.55 + label_w)  # per panel: layer labels; title, component names and module names
    frame = (1.5, 1.2 + 0.16 * len(notes))  # colour bar; suptitle, subtitle and notes
    # upright names need a column at least one line of 8 pt wide, or they would touch
    ncol, nrow, cw, ch = C.facet_grid(P, K, L, cell, pad, frame, min_cell=(0.15, 0.0))
    if annotate is None and want_ann and (cw < 0.5 or ch < 0.22):
        want_ann = False  # cells too small to print in
    note = "\n".join(notes) if notes else None
    width = max(5.0, ncol * (K * cw + pad[0]) + frame[0])
    height = nrow * (L * ch + pad[1]) + frame[1]
    width, height = C.capped(width, height)
    grid_h = nrow * (L * ch + pad[1])
    with C.style():
        fig = C.new_figure(width, height)
        axes = fig.subplots(nrow, ncol, squeeze=False, sharey=True)
        step = C.thin_ticks(L, ch * L, fontsize=7 if ch * 72 < 8 else 8)
        xfont = 8 if cw >= 0.2 else 7
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
            ax.set_yticks(range(0, L, step), [str(layers[i]) for i in range(0, L, step)])
            ax.set_xticks(range(K), [column_label(c) for c in cols], rotation=90, ha="center", fontsize=xfont)
            ax.tick_params(length=2, labelbottom=True)  # module names under every panel
            if step > 1 or ch * 72 < 8:
                ax.tick_params(axis="y", labelsize=7)
            bounds = [j for j in range(1, K) if cols[j][0] != cols[j - 1][0]]
            for b in bounds:
                ax.axvline(b - 0.5, color="white", lw=2.5 if cw >= 0.2 else 1.2)
            starts = [0] + bounds
            ends = bounds + [K]
            top = ax.secondary_xaxis("top")
            labels = []
            for s_, e_ in zip(starts, ends):  # component names over their columns; shortened where narrow
                name = str(cols[s_][0])
                room = (e_ - s_) * cw * 72 / (7 * 0.6)
                labels.append(name if len(name) <= room else name[: max(1, int(room))])
            top.set_xticks([(s_ + e_ - 1) / 2 for s_, e_ in zip(starts, ends)], labels)
            top.tick_params(length=0, labelsize=7, labelcolor="#555555")
            top.spines["top"].set_visible(False)
            if want_ann:
                annotate_cells(ax, arr[k], norm, cmap, fontsize=7)
            if k % ncol == 0:
                ax.set_ylabel("layer")
        shrink = min(1.0, 4.0 / max(grid_h, 1e-6))  # a colour bar of normal height, whatever the grid
        fig.colorbar(im, ax=[a for a in axes.flat if a.get_visible()], shrink=shrink, aspect=20, fraction=0.05,
                     label=C.metric_label(metric, meta) + (", log scale" if is_log else ""))
        C.titles(fig, title, meta, runs=C.runs_in(df, meta) + same, note=note)
    return fig


def _sim_column(kind: str, conv: str | None) -> tuple[str, str]:
    """(family, convention) from kind names like 'jaccard', 'jaccard_atol', 'overlap', 'delta_cos'."""
    for fam in ("jaccard", "overlap", "delta_cos", "sign_agree"):
        if kind == fam:
            return fam, conv or "exact"
        for c in ("exact", "atol", "rtol"):
            if kind in (f"{fam}_{c}", f"overlap_a_{c}", f"overlap_b_{c}") and fam in kind:
                return fam, c
    raise UpdeltaError(f"run_similarity kind {kind!r}: choose delta_cos, sign_agree, jaccard, overlap "
                       f"(optionally with _exact, _atol or _rtol, e.g. jaccard_atol)")


def _unchanged_pair_runs(data, df: pd.DataFrame, runs: list[str]) -> list[str]:
    """Runs without any update: from the Result's per-tensor table, else from a pair table's mask counts."""
    if hasattr(data, "tensors") and hasattr(data, "meta"):
        same = set(C.unchanged_in(data, data.tensors))
        return [r for r in runs if r in same]
    if not {"n_changed_a_exact", "n_changed_b_exact"} <= set(df.columns):
        return []
    counts = pd.concat([df[["run_a", "n_changed_a_exact"]].set_axis(["run", "n"], axis=1),
                        df[["run_b", "n_changed_b_exact"]].set_axis(["run", "n"], axis=1)])
    zero = counts.groupby("run")["n"].sum() == 0
    return [r for r in runs if bool(zero.get(r, False))]


def run_similarity(data, kind: str = "delta_cos", *, meta: dict | None = None, conv: str | None = None) -> Figure:
    """The cross-run matrix of whole-model (or of the rows given) delta cosine, mask Jaccard or overlaps.

    `data`: a `Result` (uses `pairs_summary`) or a pairs DataFrame; per-tensor or per-layer pair rows are
    combined correctly (summed dot products and mask counts), so a filtered `pairs` table gives the matrix
    of that slice. `kind`: delta_cos | sign_agree | jaccard | overlap (rows: |A∩B| / |A| with A the row's
    run), with the sparsity convention `conv` (exact, atol, rtol; default exact) or a suffix (jaccard_atol).
    Each cell shows the value and its random baseline (independent updates / masks of the same densities).
    """
    fam, conv = _sim_column(kind, conv)
    if conv not in ("exact", "atol", "rtol"):
        raise UpdeltaError(f"conv {conv!r}: choose exact, atol or rtol")
    if isinstance(data, pd.DataFrame):
        df, meta = C.as_table(data, "pairs_summary", meta)
    else:
        df, meta = C.as_table(data, "pairs_summary", meta)
    if df is None or df.empty or not all(k in df.columns for k in C.PAIR_KEYS):
        raise UpdeltaError("run_similarity needs a cross-run table: run `updelta compare` with at least two runs")
    scope = "whole model" if not isinstance(data, pd.DataFrame) else "rows given"
    if df.groupby(list(C.PAIR_KEYS), sort=False).size().max() > 1:
        C.need(df, ["dot", "n_compared", f"n_both_{conv}"], "run_similarity",
               "pass Result.pairs, .pairs_layers or .pairs_summary")
        n = df["name"].nunique() if "name" in df.columns else None
        df = aggregate_pairs(df, [])
        scope = f"{n} selected tensors" if n else "selected rows"
    runs = [r for r in C.run_info(meta).run_order if r in set(df["run_a"]) | set(df["run_b"])]
    runs += [r for r in dict.fromkeys(list(df["run_a"]) + list(df["run_b"])) if r not in runs]
    same = [r for r in _unchanged_pair_runs(data, df, runs)]
    if same and len(same) < len(runs):  # an unchanged run has no update: no cosine, no mask; said once
        df = df[~df["run_a"].isin(same) & ~df["run_b"].isin(same)]
        runs = [r for r in runs if r not in same]
    else:
        same = []
    n = len(runs)
    idx = {r: i for i, r in enumerate(runs)}
    val = np.full((n, n), np.nan)
    rnd = np.full((n, n), np.nan)
    for _, row in df.iterrows():
        i, j = idx[row["run_a"]], idx[row["run_b"]]
        if fam == "delta_cos":
            val[i, j] = val[j, i] = row["delta_cos"]
            rnd[i, j] = rnd[j, i] = 0.0
        elif fam == "sign_agree":
            val[i, j] = val[j, i] = row["sign_agree"]
            rnd[i, j] = rnd[j, i] = 0.5
        elif fam == "jaccard":
            val[i, j] = val[j, i] = row[f"jaccard_{conv}"]
            rnd[i, j] = rnd[j, i] = row[f"jaccard_random_{conv}"]
        else:  # overlap: row i = |M_i & M_j| / |M_i|
            val[i, j], rnd[i, j] = row[f"overlap_a_{conv}"], row[f"overlap_a_random_{conv}"]
            val[j, i], rnd[j, i] = row[f"overlap_b_{conv}"], row[f"overlap_b_random_{conv}"]
    opts = C.run_info(meta).options
    conv_text = schema.changed(conv, opts.atol, opts.eta)
    info = {
        "delta_cos": (f"delta cosine cos(ΔW_a, ΔW_b), {scope} flattened", "delta_cos", (-1.0, 1.0),
                      "random baseline: 0 (independent updates are orthogonal in expectation)"),
        "sign_agree": (f"sign agreement of elements changed in both runs (exact), {scope}", "sign_agree", (0.0, 1.0),
                       "random baseline: 0.5"),
        "jaccard": (f"update-mask Jaccard |A∩B| / |A∪B|, {scope} (changed: {conv_text})", f"jaccard_{conv}", (0.0, 1.0),
                    "in cells: value / random baseline for independent masks of the same densities"),
        "overlap": (f"update-mask overlap |A∩B| / |A|, A = row run, {scope} (changed: {conv_text})",
                    f"overlap_a_{conv}", (0.0, 1.0),
                    "in cells: value / random baseline (= density of the column run's mask)"),
    }[fam]
    title, metric, fixed, base_note = info
    constant = fam in ("delta_cos", "sign_agree")  # one baseline for every cell: stated once, in the note
    text = np.empty((n, n), dtype=object)
    for i in range(n):
        for j in range(n):
            if i == j:
                text[i, j] = "—"
            elif np.isfinite(val[i, j]):
                two = not constant and np.isfinite(rnd[i, j]) and n <= 8
                text[i, j] = f"{val[i, j]:.3f}\n({rnd[i, j]:.3f})" if two else f"{val[i, j]:.3f}"
            else:
                text[i, j] = "n/a"
    if not constant:
        col = f"jaccard_random_{conv}" if fam == "jaccard" else f"overlap_a_random_{conv}, overlap_b_random_{conv}"
        base_note = ("in cells: value (random baseline for independent masks of the same densities)" if n <= 8 else
                     f"random baselines (independent masks of the same densities): Result.pairs_summary, {col}")
        if fam == "overlap" and n <= 8:
            base_note = "in cells: value (random baseline = density of the column run's mask)"
    if same:
        base_note += "\n" + C.unchanged_note(same)
    norm, cmap, _, _ = color_norm(val, "delta_cos" if fam == "delta_cos" else "sparsity_exact", False, fixed)
    if fam == "sign_agree":
        cmap = mpl.colormaps["PuOr"].with_extremes(bad=C.NAN_COLOR)
    side = min(max(3.2, 0.95 * n + 1.6), C.MAX_IN - 1.8)
    fs = 8 if n <= 6 else 6.5
    with C.style():
        fig = C.new_figure(*C.capped(side + 1.6, side + 0.8 + 0.15 * base_note.count("\n")))
        ax = fig.subplots()
        im = ax.imshow(np.ma.masked_invalid(val), cmap=cmap, norm=norm, interpolation="nearest")
        if n <= 14:
            for i in range(n):
                for j in range(n):
                    v = val[i, j]
                    color = _text_color(cmap(norm(v))) if np.isfinite(v) else "#333333"
                    ax.text(j, i, text[i, j], ha="center", va="center", fontsize=fs, color=color, linespacing=1.3)
        for s in ax.spines.values():
            s.set_visible(False)
        ax.set_xticks(range(n), runs, rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center",
                      rotation_mode="anchor")
        ax.set_yticks(range(n), runs)
        ax.tick_params(length=0)
        if fam == "overlap":
            ax.set_ylabel("A (row run)")
            ax.set_xlabel("B (column run)")
        cbar = {"delta_cos": "cos(ΔW_a, ΔW_b)", "sign_agree": "share with the same sign",
                "jaccard": "Jaccard (share)", "overlap": "overlap (share of A)"}[fam]
        fig.colorbar(im, ax=ax, label=cbar, shrink=0.8)
        C.titles(fig, title, meta, runs=runs, note=base_note)
    return fig
