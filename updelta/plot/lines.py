"""Line and point figures: the per-layer profile, update spectra, the |ΔW| distribution, the size/gain trade-off."""
from __future__ import annotations

import math
import warnings

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from updelta.errors import UpdeltaError
from updelta.metrics import schema
from updelta.plot import common as C, groups as G
from updelta.plot.grids import column_key, column_label
from updelta.plot.labels import fix_layout, place_labels


def _profile_table(data, metric: str, meta: dict | None) -> tuple[pd.DataFrame, dict]:
    if isinstance(data, pd.DataFrame):
        df, meta = C.as_table(data, "layers", meta)
    else:
        meta = dict(meta if meta is not None else data.meta or {})
        df = None
        for attr in ("layers", "pairs_layers", "tensors", "pairs"):
            t = getattr(data, attr)
            if metric in t.columns:
                df = t
                break
        if df is None:
            df = data.layers
    if metric not in df.columns:
        raise UpdeltaError(f"layer_profile: {metric!r} is not a column of the table; "
                           f"choose one of: {', '.join(c for c in df.columns if c not in ('run', 'layer'))}")
    return df, meta


def _series_style(keys: list[str], meta: dict, table: pd.DataFrame | None = None) -> dict[str, dict]:
    """Per series: colour, marker, line style; runs of a zoo by group (colour per method, marker per task, line
    style per seed: `groups.styles`), other series one colour each."""
    return G.styles(keys, meta, table)


def layer_profile(data, metric: str = "rel_delta", *, meta: dict | None = None, runs=None,
                  components=None, log: bool | None = None) -> Figure:
    """`metric` per layer, one line per run (or per pair of runs for cross-run metrics), one facet per component.

    `data`: a `Result` (uses `layers`, or `pairs_layers` for cross-run metrics) or a DataFrame: a per-layer
    table, or a per-tensor one, which is combined per (run, layer, component) correctly (norms from sums of
    squares, shares weighted by element count). `components`: facets to show (default: all with layers).
    `log`: y scale; None picks log for positive metrics spanning >= 100x. Facets share the y axis.
    """
    df, meta = _profile_table(data, metric, meta)
    C.need(df, ["layer", "component"], "layer_profile", "pass Result.layers or a per-tensor table")
    df = C.with_run(C.select_runs(df, runs))
    pair = "run" not in df.columns
    keys = (list(C.PAIR_KEYS) if pair else ["run"]) + ["layer", "component"]
    present_runs = set(C.runs_in(df, meta))
    same = [r for r in C.unchanged_in(data, df) if r in present_runs]
    if same:  # nothing to draw (zero on a log scale): said once instead of an empty legend entry
        df = df[~df["run"].astype(str).isin(same)] if not pair else \
            df[~df["run_a"].astype(str).isin(same) & ~df["run_b"].astype(str).isin(same)]
    df = df[df["layer"].notna()]
    title = f"{metric} ({C.metric_label(metric, meta, long=True)}) per layer, one panel per component"
    if df.empty and same:
        return C.note_figure(title, C.unchanged_note(same).replace(", not drawn", ""), meta, runs=same)
    if df.empty:
        raise UpdeltaError(f"layer_profile of {metric}: no per-layer rows in the table")
    df, agg_note = C.aggregate_cells(df, keys, metric)
    df, na_note = C.sparsity_na(df, metric)  # adapter cells without counts: not drawn, said in the note
    agg_note = "; ".join(x for x in (agg_note, na_note) if x) or None
    df = df.assign(_s=C.series_key(df), _v=C.numeric(df[metric]), layer=df["layer"].astype("int64"))
    present = [c for c in C.COMPONENT_ORDER if c in set(df["component"])]
    present += sorted(set(df["component"]) - set(present))
    if components is not None:
        components = [components] if isinstance(components, str) else list(components)
        unknown = [c for c in components if c not in present]
        if unknown:
            raise UpdeltaError(f"component {', '.join(unknown)} has no per-layer rows; present: {', '.join(present)}")
        present = components
    else:
        has = df.groupby("component", observed=True)["_v"].apply(lambda v: bool(np.isfinite(v).any()))
        empty = [c for c in present if not has.get(c, False)]
        if len(empty) < len(present):
            present = [c for c in present if c not in empty]
            if empty:
                msg = f"no {metric} values for {', '.join(empty)}: not shown"
                agg_note = f"{agg_note}; {msg}" if agg_note else msg
    series = C.run_order(df, meta)
    sty = _series_style(series, meta)
    vals = df.loc[df["component"].isin(present), "_v"].to_numpy()
    is_log = C.auto_log(vals, metric) if log is None else bool(log)
    notes = [agg_note] if agg_note else []
    if is_log and not (vals[np.isfinite(vals)] > 0).any():
        is_log = False
        notes.append(f"log scale not possible for {metric} (no positive values)")
    if is_log:
        v = vals[np.isfinite(vals)]
        if (v <= 0).any():
            notes.append("values of 0 are not drawn on the log scale (gaps in the lines)")
    if same:
        notes.append(C.unchanged_note(same))
    nl = df["layer"].nunique()
    ncol = min(len(present), 4 if nl <= 40 else 2)
    nrow = math.ceil(len(present) / ncol)
    w = 3.1 if nl <= 40 else 4.4
    ms = 4 if nl <= 24 else (2.5 if nl <= 60 else 0)
    with C.style():
        legend_w = 0.3 + 0.07 * max(len(str(x)) for x in series) if series else 0.5
        fig = C.new_figure(*C.capped(max(5.5, ncol * w + 0.6 + legend_w), nrow * 2.5 + 1.3 + 0.18 * len(notes)))
        axes = fig.subplots(nrow, ncol, squeeze=False, sharex=True, sharey=True)
        for k, ax in enumerate(axes.flat):
            if k >= len(present):
                ax.set_visible(False)
                continue
            comp = present[k]
            sub = df[df["component"] == comp]
            for s in series:
                d = sub[sub["_s"] == s].sort_values("layer")
                if d.empty:
                    continue
                y = d["_v"].to_numpy()
                if is_log:
                    y = np.where(y > 0, y, np.nan)
                ax.plot(d["layer"].to_numpy(), y, color=sty[s]["color"], marker=sty[s]["marker"] if ms else None,
                        markersize=ms or 3, lw=1.4, ls=sty[s]["ls"], label=s)
            ax.set_title(comp)
            ax.grid(True, axis="y")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))
            if is_log:
                ax.set_yscale("log")
            if k % ncol == 0:
                ax.set_ylabel(C.metric_label(metric, meta), fontsize=8)
            if k // ncol == nrow - 1 or k + ncol >= len(present):
                ax.set_xlabel("layer")
                ax.tick_params(labelbottom=True)
        handles = [Line2D([], [], color=sty[s]["color"], marker=sty[s]["marker"], lw=1.4, ls=sty[s]["ls"], label=s)
                   for s in series]
        fig.legend(handles=handles, loc="outside right center", frameon=False,
                   title="pair of runs" if pair else "run")
        C.titles(fig, title, meta, runs=C.runs_in(df, meta) + same, note="\n".join(notes) if notes else None)
    return fig


# ---- spectrum ---------------------------------------------------------------------------------------
SPECTRAL_ROWS = [  # column, y label, y scale, x axis
    ("topk_sv", "σᵢ of ΔW (top singular values)", "log", "index"),
    ("principal_cos_u", "cos θᵢ, left subspaces U0 vs U1", "unit", "index"),
    ("principal_cos_v", "cos θᵢ, right subspaces V0 vs V1", "unit", "index"),
    ("intruders_sweep", "intruder dimensions (count)\nat threshold ε", "count", "eps"),
]


def _sweep_eps() -> np.ndarray | None:
    """The thresholds of the `intruders_sweep` column (declared in the schema)."""
    return np.asarray(schema.INTRUDER_SWEEP, dtype="float64")


def spectrum(data, *, meta: dict | None = None, runs=None, by: str = "module",
             params: tuple[str, ...] | None = ("weight",)) -> Figure:
    """Top singular values of each update (log scale), per module (`by="module"`) or component (`by="component"`),
    one curve per tensor coloured by layer, with the median over layers in black; principal-angle cosines
    between the top-k subspaces of W0 and W1 in further rows when the table has them.

    `data`: a `Result` or its `tensors` DataFrame with a `topk_sv` list column (`--spectral fast|full`) and,
    optionally, `principal_cos_u` / `principal_cos_v` (`--spectral full`). One row of panels per run and quantity.
    """
    df, meta = C.as_table(data, "tensors", meta)
    if by not in ("module", "component"):
        raise UpdeltaError(f"spectrum by={by!r}: choose module or component")
    eps = _sweep_eps()
    rows = [r for r in SPECTRAL_ROWS if r[0] in df.columns and (r[3] != "eps" or eps is not None)
            and df[r[0]].map(lambda v: C.as_array(v) is not None).any()]
    if not any(r[3] == "index" for r in rows):
        raise UpdeltaError("spectrum: the table has no singular values (column topk_sv); "
                           "rerun diff/compare with --spectral fast or --spectral full")
    df = C.with_run(C.select_runs(df, runs))
    present = set(C.runs_in(df, meta))
    same = [r for r in C.unchanged_in(data, df) if r in present]
    df = df[~df["run"].astype(str).isin(same)]
    title = "spectrum of the update ΔW = W1 − W0" + (" and principal angles" if len(rows) > 1 else "")
    if df.empty and same:
        return C.note_figure(title, C.unchanged_note(same).replace(", not drawn", ""), meta, runs=same)
    if params is not None and "param" in df.columns:
        df = df[df["param"].isin((params,) if isinstance(params, str) else tuple(params))]
    if "param" not in df.columns:
        df = df.assign(param="weight")
    df = df.assign(_s=C.series_key(df))
    series = C.run_order(df, meta)
    if by == "module":
        gkey = [(c, m, p) for c, m, p in zip(df["component"], df["module"], df["param"])]
    else:
        gkey = [(c, "", p) for c, p in zip(df["component"], df["param"])]
    df = df.assign(_g=gkey)
    groups = sorted({g for g, *arrs in zip(df["_g"], *(df[r[0]] for r in rows))
                     if any(C.as_array(a) is not None for a in arrs)}, key=column_key)
    if not groups:
        raise UpdeltaError("spectrum: no tensor has spectral values after the run/param filters")
    layer_vals = df["layer"].dropna().astype("int64")
    lmin, lmax = (int(layer_vals.min()), int(layer_vals.max())) if len(layer_vals) else (0, 0)
    lnorm = Normalize(lmin, max(lmax, lmin + 1))
    cmap = mpl.colormaps[C.SEQ_CMAP]
    if len(series) > SPECTRUM_PER_TENSOR_RUNS:
        return _spectrum_by_run(df, meta, series, rows, groups, by, eps, title, same)
    nr, ng = len(series) * len(rows), len(groups)
    with C.style():
        fig = C.new_figure(*C.capped(max(6.0, 1.9 * ng + 1.6), 1.9 * nr + 1.4 + 0.15 * bool(same)))
        axes = fig.subplots(nr, ng, squeeze=False, sharey="row")
        k_max = 1
        for si, s in enumerate(series):
            sub = df[df["_s"] == s]
            for ri, (col, label, yscale, xkind) in enumerate(rows):
                r = si * len(rows) + ri
                for gi, g in enumerate(groups):
                    ax = axes[r, gi]
                    d = sub[sub["_g"] == g].sort_values("layer", na_position="first")
                    curves = []
                    for layer, v in zip(d["layer"], d[col]):
                        a = C.as_array(v)
                        if a is None or (xkind == "eps" and a.size != eps.size):
                            continue
                        x = np.arange(1, a.size + 1) if xkind == "index" else eps
                        if xkind == "index":
                            k_max = max(k_max, a.size)
                        if yscale == "log":
                            a = np.where(a > 0, a, np.nan)
                        color = "#555555" if pd.isna(layer) else cmap(lnorm(int(layer)))
                        ax.plot(x, a, color=color, lw=0.9, alpha=0.85)
                        curves.append(a)
                    if len(curves) >= 3:
                        m = max(c.size for c in curves)
                        stack = np.full((len(curves), m), np.nan)
                        for i, c in enumerate(curves):
                            stack[i, : c.size] = c
                        with np.errstate(all="ignore"), warnings.catch_warnings():
                            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: no median
                            med = np.nanmedian(stack, axis=0)
                        ax.plot(np.arange(1, m + 1) if xkind == "index" else eps, med, color="black", lw=1.6,
                                ls="--")
                    if yscale == "log":
                        ax.set_yscale("log")
                    elif yscale == "unit":
                        ax.set_ylim(0, 1.03)
                    else:
                        ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
                    ax.grid(True, axis="y", which="major")
                    if r == 0:
                        comp_title = str(g[0]) + ("" if g[2] == "weight" else f" {g[2]}")
                        ax.set_title(column_label(g) if by == "module" else comp_title)
                    if gi == 0:
                        ax.set_ylabel(f"{s}\n{label}" if len(series) > 1 else label, fontsize=8)
                    if xkind == "eps":
                        ax.set_xlim(0, 1)
                        ax.set_xticks([0, 0.5, 1], ["0", "0.5", "1"])
                        ax.set_xlabel("threshold ε")
                    elif r == nr - 1 or rows[(r + 1) % len(rows)][3] != "index" or r % len(rows) == len(rows) - 1:
                        ax.set_xlabel("index i")
                    if not curves:
                        ax.text(0.5, 0.5, "no values", transform=ax.transAxes, ha="center", va="center",
                                color="#777777", fontsize=8)
        for r in range(nr):
            if rows[r % len(rows)][2] == "count":
                top = max([np.nanmax(ln.get_ydata()) for ax in axes[r] for ln in ax.get_lines()
                           if np.isfinite(ln.get_ydata()).any()] or [1.0])
                axes[r, 0].set_ylim(-0.05 * max(top, 1.0), max(top, 1.0) * 1.1)
            if rows[r % len(rows)][3] == "index":
                for ax in axes[r]:
                    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
                    ax.set_xlim(0.5, k_max + 0.5)
        if lmax > lmin:
            fig.colorbar(mpl.cm.ScalarMappable(norm=lnorm, cmap=cmap), ax=axes.ravel().tolist(), label="layer",
                         shrink=min(1.0, 3.5 / (2.0 * nr)) if nr > 1 else 1.0, aspect=25)
        note = "one curve per tensor, coloured by layer (grey: no layer); black dashed: median over tensors"
        if any(r[3] == "eps" for r in rows):
            note += "\n" + INTRUDER_NOTE
        if same:
            note += "\n" + C.unchanged_note(same)
        C.titles(fig, title, meta, runs=series + same, note=note)
    return fig


SPECTRUM_PER_TENSOR_RUNS = 2  # more runs than this: one median curve per run (rows per run would not fit)
INTRUDER_NOTE = ("intruder dimensions: top singular vectors of W1 whose largest |cos| with every singular vector of "
                 "W0 is below ε (Shuttleworth et al. 2024)")


def _median_curve(d: pd.DataFrame, col: str, xkind: str, eps: np.ndarray) -> np.ndarray | None:
    curves = [a for a in (C.as_array(v) for v in d[col]) if a is not None and (xkind != "eps" or a.size == eps.size)]
    if not curves:
        return None
    m = max(c.size for c in curves)
    stack = np.full((len(curves), m), np.nan)
    for i, c in enumerate(curves):
        stack[i, : c.size] = np.where(c > 0, c, np.nan) if xkind == "index" and col == "topk_sv" else c
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(stack, axis=0)


def _spectrum_by_run(df, meta, series, rows, groups, by, eps, title, same) -> Figure:
    """Many runs: one row per quantity, one panel per module/component, one curve per run (the median over its
    tensors, every layer), so the figure keeps its size whatever the number of runs."""
    sty = _series_style(series, meta)
    nr, ng = len(rows), len(groups)
    legend_w = 0.4 + 0.07 * max(len(s) for s in series)
    with C.style():
        fig = C.new_figure(*C.capped(max(6.0, 1.9 * ng + 0.8 + legend_w), 2.0 * nr + 1.5 + 0.15 * bool(same)))
        axes = fig.subplots(nr, ng, squeeze=False, sharey="row")
        k_max, note_floor = 1, False
        for ri, (col, label, yscale, xkind) in enumerate(rows):
            for gi, g in enumerate(groups):
                ax = axes[ri, gi]
                drawn = 0
                for s in series:
                    d = df[(df["_s"] == s) & (df["_g"] == g)]
                    med = _median_curve(d, col, xkind, eps) if len(d) else None
                    if med is None or not np.isfinite(med).any():
                        continue
                    x = np.arange(1, med.size + 1) if xkind == "index" else eps
                    if xkind == "index":
                        k_max = max(k_max, med.size)
                    ax.plot(x, med, color=sty[s]["color"], marker=sty[s]["marker"], markersize=2.5, lw=1.2,
                            ls=sty[s]["ls"])
                    drawn += 1
                if yscale == "log" and drawn:
                    ax.set_yscale("log")
                elif yscale == "unit":
                    ax.set_ylim(0, 1.03)
                elif yscale == "count":
                    ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
                ax.grid(True, axis="y", which="major")
                if ri == 0:
                    ax.set_title(column_label(g) if by == "module" else str(g[0]) + (
                        "" if g[2] == "weight" else f" {g[2]}"))
                if gi == 0:
                    ax.set_ylabel(label, fontsize=8)
                if xkind == "eps":
                    ax.set_xlim(0, 1)
                    ax.set_xticks([0, 0.5, 1], ["0", "0.5", "1"])
                    ax.set_xlabel("threshold ε")
                else:
                    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
                    if ri == nr - 1 or rows[ri + 1][3] != "index":
                        ax.set_xlabel("index i")
                if not drawn:
                    ax.text(0.5, 0.5, "no values", transform=ax.transAxes, ha="center", va="center",
                            color="#777777", fontsize=8)
        for ri, r in enumerate(rows):
            if r[3] == "index":
                for ax in axes[ri]:
                    ax.set_xlim(0.5, k_max + 0.5)
            if r[2] == "log":  # singular values at round-off (rank below k) would stretch the axis over 20 decades
                ys = [y for ax in axes[ri] for ln in ax.get_lines() for y in np.asarray(ln.get_ydata(), float)
                      if np.isfinite(y) and y > 0]
                if ys and max(ys) / min(ys) > 1e8:
                    axes[ri, 0].set_ylim(max(ys) * 1e-8, max(ys) * 2)
                    note_floor = True
        handles = [Line2D([], [], color=sty[s]["color"], marker=sty[s]["marker"], lw=1.2, ls=sty[s]["ls"], label=s)
                   for s in series]
        fig.legend(handles=handles, loc="outside right center", frameon=False, title="run")
        note = "one curve per run: the median over its tensors (every layer) of each quantity"
        if note_floor:
            note += "; σ below 1e-8 of the largest (round-off: rank below k) not shown"
        if any(r[3] == "eps" for r in rows):
            note += "\n" + INTRUDER_NOTE
        if same:
            note += "\n" + C.unchanged_note(same)
        C.titles(fig, title, meta, runs=series + same, note=note)
    return fig


# ---- distribution -----------------------------------------------------------------------------------
def _bin_edges(meta: dict, nbins: int) -> np.ndarray:
    """Plot edges of the |ΔW| bins 0..nbins-2 (bin 0, subnormals, drawn as [2^-127, 2^-126))."""
    lower = C.run_info(meta).hist_edges
    if lower:
        lower = np.asarray(lower, dtype="float64")
        expected = np.array([0.0] + [2.0 ** (i - 127) for i in range(1, len(lower))])
        if lower.shape != expected.shape or not np.allclose(lower, expected, rtol=0, atol=0):
            raise UpdeltaError("distribution: meta['hist_edges'] are not the power-of-two edges this plot "
                               "understands; recompute the result with this updelta version")
    n = nbins - 1  # the last count is exact zeros
    return np.array([2.0 ** (i - 127) for i in range(0, n + 1)])


def distribution(data, *, meta: dict | None = None, runs=None, components=None) -> Figure:
    """Distribution of |ΔW| per run on power-of-two bins, exact zeros apart, with the sparsity tolerances drawn.

    `data`: a `Result` or its `tensors` DataFrame with the `hist` list column (diff/compare with
    `histogram=True`, CLI `--histogram`); `meta["hist_edges"]` (bins) and `meta["options"]` (atol, eta).
    The y axis is the share of compared elements per bin, summed over the selected tensors
    (`components` filters, e.g. ["attn", "mlp"]). The atol line is exact; the rtol threshold
    eta * max(|W0|, |W1|) differs per element, so its line marks eta * rms(W0) as a typical value.
    The legend gives each run's measured sparsity under the three conventions.
    """
    df, meta = C.as_table(data, "tensors", meta)
    if "hist" not in df.columns or not df["hist"].map(lambda v: C.as_array(v) is not None).any():
        raise UpdeltaError("distribution: the table has no |ΔW| histogram (column hist); "
                           "rerun diff/compare with --histogram (histogram=True)")
    df = C.select_runs(df, runs)
    if components is not None:
        components = [components] if isinstance(components, str) else list(components)
        df = df[df["component"].isin(components)]
    df = df[df["hist"].map(lambda v: C.as_array(v) is not None)]
    if df.empty:
        raise UpdeltaError("distribution: no tensor with a histogram after the run/component filters")
    df = df.assign(_s=C.series_key(df))
    series = C.run_order(df, meta)
    sty = _series_style(series, meta)
    opts = C.run_info(meta).options
    atol, eta = opts.atol, opts.eta
    counts, shares, sp = {}, {}, {}
    for s in series:
        d = df[df["_s"] == s]
        h = np.sum(np.stack([C.as_array(v) for v in d["hist"]]), axis=0)
        n = float(d["n_compared"].sum()) if "n_compared" in d.columns else float(h.sum())
        counts[s] = h
        shares[s] = h / max(n, 1.0) * 100.0
        w = d["n_compared"].astype("float64") if "n_compared" in d.columns else None
        sp[s] = {c: (float((d[f"sparsity_{c}"] * w).sum() / w.sum()) if w is not None and w.sum() > 0
                     and f"sparsity_{c}" in d.columns else math.nan) for c in ("exact", "atol", "rtol")}
    nb = len(next(iter(counts.values())))
    edges = _bin_edges(meta, nb)
    nz = np.nonzero(np.sum([counts[s][:-1] for s in series], axis=0))[0]
    rt, band = None, None
    if "base_fro" in df.columns and "n_compared" in df.columns:
        one = df.drop_duplicates("name") if "name" in df.columns else df
        n = one["n_compared"].astype("float64")
        rms = math.sqrt(float((one["base_fro"] ** 2).sum()) / max(float(n.sum()), 1.0))
        per = (eta * one["base_fro"] / np.sqrt(n.where(n > 0))).to_numpy()
        per = per[np.isfinite(per) & (per > 0)]
        if rms > 0:
            rt = eta * rms
        if per.size:
            band = (float(per.min()), float(per.max()))
    marks = [atol] + ([rt] if rt else []) + (list(band) if band else [])
    if nz.size:
        lo_i, hi_i = max(int(nz.min()) - 1, 0), min(int(nz.max()) + 2, len(edges) - 1)
        lo, hi = edges[lo_i], edges[hi_i]
    else:
        lo, hi = atol / 16, atol * 16
    lo, hi = min([lo] + [m / 2 for m in marks]), max([hi] + [m * 2 for m in marks])
    ymax = max(float(np.max(shares[s])) for s in series)
    if len(series) > DISTRIBUTION_OVERLAY_RUNS:
        return _distribution_panels(series, sty, shares, sp, edges, (lo, hi), ymax, (atol, eta, rt, band), meta,
                                    components)
    with C.style():
        fig = C.new_figure(8.0, 4.6)
        ax0, ax = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [1, 7]})
        width = 0.8 / len(series)
        for i, s in enumerate(series):
            ax0.bar(i * width - 0.4 + width / 2, shares[s][-1], width=width, color=sty[s]["color"])
            ax.stairs(shares[s][:-1], edges, color=sty[s]["color"], lw=1.5, fill=False, baseline=None)
            ax.stairs(shares[s][:-1], edges, color=sty[s]["color"], alpha=0.12, fill=True)
        ax0.set_xticks([0], ["ΔW = 0"])
        ax0.set_xlim(-0.6, 0.6)
        ax0.set_ylabel("share of compared elements per bin (%)")
        ax0.set_title("exact zeros", fontsize=8.5)
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(0, ymax * 1.12 if ymax > 0 else 1)
        ax.set_xlabel("|ΔW| = |W1 − W0| (weight units; bins of ×2)")
        ax.grid(True, axis="y")
        ax.axvline(atol, color="#333333", ls="--", lw=1.2)
        ax.annotate(f"atol = {atol:g}", (atol, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -10),
                    textcoords="offset points", fontsize=7.5, ha="left", va="top", color="#333333")
        if band and band[1] > band[0]:
            ax.axvspan(band[0], band[1], color="#999999", alpha=0.15, lw=0)
        if rt:
            ax.axvline(rt, color="#333333", ls=":", lw=1.4)
            ax.annotate(f"rtol ≈ η·rms(W0) = {rt:.1e}", (rt, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(3, -22), textcoords="offset points", fontsize=7.5, ha="left", va="top",
                        color="#333333")

        def pct(v):
            return "–" if not np.isfinite(v) else f"{100 * v:.1f}%"
        handles = [Line2D([], [], color=sty[s]["color"], lw=2,
                          label=f"{s}: unchanged exact {pct(sp[s]['exact'])}, atol {pct(sp[s]['atol'])}, "
                                f"rtol {pct(sp[s]['rtol'])}") for s in series]
        handles += [Line2D([], [], color="#333333", ls="--", label=f"atol: |ΔW| ≤ {atol:g} counts as unchanged"),
                    Line2D([], [], color="#333333", ls=":",
                           label=f"rtol: |ΔW| ≤ {eta:g}·max(|W0|,|W1|) differs per element: line at η·rms(W0) "
                                 f"over the tensors shown, grey band: η·rms(W0) per tensor, min to max")]
        fig.legend(handles=handles, loc="outside lower center", ncols=1 if len(series) > 2 else 2, frameon=False,
                   fontsize=7.5)
        scope = f"components: {', '.join(components)}" if components else "all tensors"
        C.titles(fig, f"distribution of |ΔW| per run, power-of-two bins ({scope})", meta, runs=series)
    return fig


DISTRIBUTION_OVERLAY_RUNS = 2  # more runs than this: one panel per run (overlaid steps would hide each other)


def _distribution_panels(series, sty, shares, sp, edges, xlim, ymax, tol, meta, components) -> Figure:
    """Small multiples of the |ΔW| distribution: one panel per run (same axes), the exact zeros of every run as
    one bar chart beside them. Runs with no changed element get no panel (said once)."""
    atol, eta, rt, band = tol
    same = [s for s in series if not np.any(shares[s][:-1] > 0)]
    shown = [s for s in series if s not in same]
    ncol = 3 if len(shown) <= 9 else (4 if len(shown) <= 16 else 6)
    ncol = max(1, min(ncol, len(shown)))
    nrow = max(1, math.ceil(len(shown) / ncol))
    pw, ph = 2.7 if ncol <= 4 else 2.3, 1.75
    bar_h = 0.22 * len(series) + 0.8

    def pct(v):
        return "–" if not np.isfinite(v) else f"{100 * v:.1f}%"
    with C.style():
        w, h = C.capped(2.4 + ncol * pw + 0.4, max(nrow * ph, bar_h) + 2.0 + 0.15 * bool(same))
        fig = C.new_figure(w, h)
        left, right = fig.subfigures(1, 2, width_ratios=[2.4, w - 2.4], wspace=0.02)
        ax0 = left.subplots()
        y = np.arange(len(series))
        ax0.barh(y, [shares[s][-1] for s in series], color=[sty[s]["color"] for s in series], height=0.7)
        ax0.set_yticks(y, series, fontsize=7.5 if len(series) <= 12 else 6.5)
        ax0.invert_yaxis()
        ax0.set_xlabel("share of elements with ΔW = 0 (%)", fontsize=8)
        ax0.set_title("exact zeros", fontsize=8.5)
        ax0.grid(True, axis="x")
        axes = right.subplots(nrow, ncol, squeeze=False, sharex=True)  # y per panel: each run's shape readable
        for k, ax in enumerate(axes.flat):
            if k >= len(shown):
                ax.set_visible(False)
                continue
            s = shown[k]
            ax.stairs(shares[s][:-1], edges, color=sty[s]["color"], lw=1.4, fill=False, baseline=None)
            ax.stairs(shares[s][:-1], edges, color=sty[s]["color"], alpha=0.15, fill=True)
            ax.set_xscale("log")
            ax.set_xlim(*xlim)
            top = float(np.max(shares[s][:-1]))
            ax.set_ylim(0, top * 1.15 if top > 0 else 1)
            ax.axvline(atol, color="#333333", ls="--", lw=1.0)
            if band and band[1] > band[0]:
                ax.axvspan(band[0], band[1], color="#999999", alpha=0.15, lw=0)
            if rt:
                ax.axvline(rt, color="#333333", ls=":", lw=1.2)
            ax.set_title(f"{s}\nunchanged: exact {pct(sp[s]['exact'])}, atol {pct(sp[s]['atol'])}, "
                         f"rtol {pct(sp[s]['rtol'])}", fontsize=7.5)
            ax.grid(True, axis="y")
            if k % ncol == 0:
                ax.set_ylabel("share per bin (%)", fontsize=7.5)
            if k + ncol >= len(shown):
                ax.set_xlabel("|ΔW| (bins of ×2)", fontsize=7.5)
                ax.tick_params(labelbottom=True)
        handles = [Line2D([], [], color="#333333", ls="--", label=f"atol: |ΔW| ≤ {atol:g} counts as unchanged"),
                   Line2D([], [], color="#333333", ls=":",
                          label=f"rtol: η·rms(W0) with η = {eta:g} (grey band: η·rms(W0) per tensor, min to max)")]
        right.legend(handles=handles, loc="outside lower center", ncols=1, frameon=False, fontsize=7.5)
        scope = f"components: {', '.join(components)}" if components else "all tensors"
        note = "y axes differ per panel: the share of the run's compared elements in each bin"
        note += ("\n" + C.unchanged_note(same).replace("not drawn", "no panel")) if same else ""
        C.titles(fig, f"distribution of |ΔW| per run, power-of-two bins ({scope})", meta, runs=series, note=note)
    return fig


# ---- tradeoff ---------------------------------------------------------------------------------------
GAIN_ORDER = ["gain_target_id", "gain_target_ood", "gain_knowledge", "gain_retention"]
GAIN_LABEL = {"gain_target_id": "target task, in distribution", "gain_target_ood": "target task, out of distribution",
              "gain_knowledge": "knowledge", "gain_retention": "retention"}


def tradeoff(summary, *, x: str = "rel_delta", meta: dict | None = None) -> Figure:
    """One point per run: update size `x` (a summary column, default rel_delta) against each evaluation change.

    `summary`: a `Result` (its `summary`) or a DataFrame with `run`, `x` and `gain_*` columns
    (after - before; `gain_target_id`, `gain_target_ood`, `gain_knowledge`, `gain_retention`, e.g. from
    `with_evals`). One panel per gain column present. Raises `UpdeltaError` when there is none.
    """
    df, meta = C.as_table(summary, "summary", meta)
    C.need(df, ["run", x], "tradeoff", f"pass the summary table (Result.summary) with a {x} column")
    gains = [g for g in GAIN_ORDER if g in df.columns] + sorted(
        c for c in df.columns if c.startswith("gain_") and c not in GAIN_ORDER)
    gains = [g for g in gains if C.numeric(df[g]).notna().any()]
    if not gains:
        raise UpdeltaError("tradeoff: no evaluations in the summary (columns gain_target_id, gain_target_ood, "
                           "gain_knowledge, gain_retention); add them from the runs' eval.json "
                           "(updelta.plot.with_evals or `updelta plot --eval RUN=eval.json`)")
    df = df.assign(_x=C.numeric(df[x]), run=df["run"].astype(str))
    has = df[gains].apply(C.numeric).notna().any(axis=1) & df["_x"].notna()
    if not has.any():
        raise UpdeltaError(f"tradeoff: no run has both {x} and an evaluation change")
    df = df[has]
    series = C.run_order(df, meta)
    sty = _series_style(series, meta, df)
    joins = G.seed_sets(series, sty)
    xs = df["_x"].to_numpy()
    logx = C.auto_log(xs, x)
    ncol = min(len(gains), 2)
    nrow = math.ceil(len(gains) / ncol)
    with C.style():
        legend_w = 0.4 + 0.07 * max(len(r) for r in series)
        fig = C.new_figure(*C.capped(3.6 * ncol + 0.8 + legend_w, 2.9 * nrow + 1.4))
        axes = fig.subplots(nrow, ncol, squeeze=False, sharex=True)
        for k, ax in enumerate(axes.flat):
            if k >= len(gains):
                ax.set_visible(False)
                continue
            g = gains[k]
            ys = C.numeric(df[g])
            ax.axhline(0, color="#888888", lw=0.8)
            for s in series:
                m = (df["run"] == s).to_numpy()
                xv, yv = df["_x"].to_numpy()[m], ys.to_numpy()[m]
                ax.scatter(xv, yv, color=sty[s]["color"], marker=sty[s]["marker"], s=36, zorder=3, label=s)
            for js in joins:  # the seeds of one method and task, joined in order of x
                pts = sorted((float(df.loc[df["run"] == r, "_x"].iloc[0]), float(ys[(df["run"] == r).to_numpy()].iloc[0]))
                             for r in js)
                pts = [p for p in pts if np.isfinite(p[0]) and np.isfinite(p[1])]
                if len(pts) > 1:
                    ax.plot(*zip(*pts), color=sty[js[0]]["color"], lw=0.9, alpha=0.6, zorder=2)
            if logx:
                ax.set_xscale("log")
            else:
                ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
            ax.set_title(GAIN_LABEL.get(g, g[5:]))
            ax.set_ylabel("change in score (after − before)", fontsize=8)
            ax.grid(True)
            ax.margins(x=0.15, y=0.2)
            if not logx and np.nanmin(xs) >= 0:  # from just below 0: a run at 0 is drawn whole, ticks clear the corner
                hi = np.nanmax(xs) * 1.2 or 1.0
                ax.set_xlim(-0.06 * hi, hi)
                ticks = MaxNLocator(nbins=5).tick_values(0, hi)
                ax.set_xticks([t for t in ticks if 0 <= t <= hi])
            if k // ncol == nrow - 1 or k + ncol >= len(gains):
                ax.set_xlabel(C.metric_label(x, meta), fontsize=8)
                ax.tick_params(labelbottom=True)
        handles, what = G.legend_handles(series, sty)
        fig.legend(handles=handles, loc="outside right center", frameon=False, title=what)
        note = ("colour: method, marker: task; the seeds of one method and task are joined" if joins else
                None) if what != "run" else None
        C.titles(fig, f"update size ({x}) against evaluation change, one point per run", meta, runs=series, note=note)
        fig.get_layout_engine().set(w_pad=0.08, wspace=0.06)
        renderer = fix_layout(fig)  # labels are placed in the final layout, measured with the renderer
        for k, g in enumerate(gains):
            ax = axes.flat[k]
            ys = C.numeric(df[g]).to_numpy()
            place_labels(fig, ax, np.column_stack([df["_x"].to_numpy(), ys]), list(df["run"]), renderer,
                         marker_pt=3.5)
    return fig
