"""What every plot shares: input coercion, the look (fonts, colours, colormaps), metric labels, titles, ticks.

No function here touches pyplot or global matplotlib state: figures are `matplotlib.figure.Figure`
objects (no backend needed) and styling is applied inside `matplotlib.rc_context`, which restores
the caller's rcParams on exit.
"""
from __future__ import annotations

import math
import os
import textwrap
from contextlib import contextmanager
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from updelta.atomic import atomic_path
from updelta.errors import UpdeltaError
from updelta.metrics import schema
from updelta.tables.aggregate import (
    CHEAP,
    aggregate_pairs,
    aggregate_tensors,
    counted,
    sparsity_left_out,
    towers_included,
    unchanged,
    unchanged_runs,
)
from updelta.tables.meta import info as run_info

DPI = 150
# Every figure fits MAX_PX pixels on its longer side at DPI (a page, a slide, a screen): grids of many runs or
# layers shrink their cells, facet, or summarise instead of growing.
MAX_PX = 3000
MAX_IN = MAX_PX / DPI - 0.2  # inches, with a margin for rounding
UNCHANGED = "bit-identical to the base"
# Okabe & Ito (2008): distinguishable under the common colour-vision deficiencies.
RUN_COLORS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
SEQ_CMAP = "viridis"  # sequential, perceptually uniform, colour-blind safe
DIV_CMAP = "RdBu_r"  # diverging (ColorBrewer RdBu, colour-blind safe), centred at 0
NAN_COLOR = "#d9d9d9"

STYLE = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "xtick.labelsize": 8, "ytick.labelsize": 8,
    "legend.fontsize": 8, "figure.titlesize": 11, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": False, "grid.color": "#e5e5e5", "grid.linewidth": 0.6, "axes.edgecolor": "#555555",
    "savefig.dpi": DPI, "figure.dpi": 100, "image.cmap": SEQ_CMAP, "svg.fonttype": "none",
}

COMPONENT_ORDER = list(schema.components())  # model order, embeddings first
MODULE_ORDER = [
    # attention
    "q_proj", "k_proj", "v_proj", "qkv_proj", "query_key_value", "c_attn", "o_proj", "dense", "c_proj",
    # mlp
    "gate_proj", "up_proj", "gate_up_proj", "c_fc", "dense_h_to_4h", "down_proj", "dense_4h_to_h",
    # norms
    "q_norm", "k_norm", "input_layernorm", "ln_1", "post_attention_layernorm", "ln_2", "pre_feedforward_layernorm",
    "post_feedforward_layernorm",
]
SHORT = {"input_layernorm": "in_norm", "post_attention_layernorm": "post_attn_norm",
         "pre_feedforward_layernorm": "pre_ffn_norm", "post_feedforward_layernorm": "post_ffn_norm",
         "query_key_value": "qkv", "dense_h_to_4h": "h_to_4h", "dense_4h_to_h": "4h_to_h", "embed_tokens": "embed",
         "gate_up_proj": "gate_up"}

SHARES = {c.name for c in schema.COLUMNS.values() if c.unit == "share"}  # fractions in [0, 1]
SIGNED = {c.name for c in schema.COLUMNS.values() if c.unit == "cosine"}  # signed: diverging colormap centred at 0
PAIR_KEYS = ("run_a", "run_b")


def is_share(metric: str) -> bool:
    return metric in SHARES or metric.startswith(("jaccard", "overlap", "sparsity"))


def conventions(meta: dict | None) -> dict[str, str]:
    """Each sparsity convention's definition of *unchanged*, with the result's tolerances."""
    o = run_info(meta).options
    return schema.conventions(o.atol, o.eta)


def metric_label(metric: str, meta: dict | None = None, long: bool = False) -> str:
    """Axis label of `metric` with its unit (`long`: a description for titles), from the schema; sparsity and
    mask metrics name their convention."""
    o = run_info(meta).options
    return schema.label(metric, long, o.atol, o.eta)


def as_table(data, attr: str, meta: dict | None) -> tuple[pd.DataFrame, dict]:
    """(DataFrame, meta) from a `Result` (its table `attr`) or a DataFrame (with the `meta` given)."""
    if isinstance(data, pd.DataFrame):
        return data, dict(meta or {})
    if hasattr(data, "tensors") and hasattr(data, "meta"):
        df = getattr(data, attr)
        if attr in ("tensors", "pairs"):  # a Result's tower rows are plotted only with the towers option
            df = counted(df, towers_included(data.meta))
        return df, dict(meta if meta is not None else data.meta or {})
    raise UpdeltaError(f"expected a updelta Result or a pandas DataFrame, got {type(data).__name__}")


def need(df: pd.DataFrame, cols, what: str, fix: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise UpdeltaError(f"{what}: the table has no column {', '.join(missing)}; {fix}")


def series_key(df: pd.DataFrame) -> pd.Series:
    """One label per row: the run, or 'a vs b' for a cross-run table."""
    if "run" in df.columns:
        return df["run"].astype(str)
    if all(k in df.columns for k in PAIR_KEYS):
        return df["run_a"].astype(str) + " vs " + df["run_b"].astype(str)
    return pd.Series(["all"] * len(df), index=df.index)


def with_run(df: pd.DataFrame) -> pd.DataFrame:
    """A table without run columns (a hand-made one) is one run, named 'all'."""
    if "run" in df.columns or all(k in df.columns for k in PAIR_KEYS):
        return df
    return df.assign(run="all")


def run_order(df: pd.DataFrame, meta: dict) -> list[str]:
    present = list(dict.fromkeys(series_key(df)))
    order = list(run_info(meta).run_order)
    if "run" not in df.columns and all(k in df.columns for k in PAIR_KEYS):
        order = [f"{a} vs {b}" for i, a in enumerate(order) for b in order[i + 1:]]
    return [r for r in order if r in present] + [r for r in present if r not in order]


def runs_in(df: pd.DataFrame, meta: dict) -> list[str]:
    """The runs a table covers (columns run, or run_a and run_b), in the result's run order."""
    cols = ["run"] if "run" in df.columns else [c for c in PAIR_KEYS if c in df.columns]
    present = list(dict.fromkeys(str(v) for c in cols for v in df[c]))
    order = list(run_info(meta).run_order)
    return [r for r in order if r in present] + [r for r in present if r not in order]


def run_colors(meta: dict, keys: list[str]) -> dict[str, str]:
    """The same colour for a run in every figure: by position in the result's run order."""
    order = list(run_info(meta).run_order)
    out, extra = {}, 0
    for k in keys:
        if k in order:
            out[k] = RUN_COLORS[order.index(k) % len(RUN_COLORS)]
        else:
            out[k] = RUN_COLORS[(len(order) + extra) % len(RUN_COLORS)]
            extra += 1
    return out


def select_runs(df: pd.DataFrame, runs) -> pd.DataFrame:
    if runs is None:
        return df
    runs = [runs] if isinstance(runs, str) else list(runs)
    key = series_key(df)
    have = set(key) | set(df.get("run_a", pd.Series(dtype=str))) | set(df.get("run_b", pd.Series(dtype=str)))
    unknown = [r for r in runs if r not in have]
    if unknown:
        raise UpdeltaError(f"run {', '.join(map(repr, unknown))} is not in the result; runs: {', '.join(sorted(have))}")
    if "run" in df.columns:
        return df[df["run"].isin(runs)]
    return df[df["run_a"].isin(runs) & df["run_b"].isin(runs) | key.isin(runs)]


def _short_path(p) -> str:
    if not p:
        return "?"
    parts = Path(str(p).rstrip("/")).parts
    return "/".join(parts[-2:]) if len(parts) >= 2 and parts[-1].startswith(("model", "pytorch_model")) else parts[-1]


def checkpoints_line(meta: dict, runs: list[str] | None = None) -> str:
    """'base <base> → runs: a, b' from the result's metadata (what is compared)."""
    m = run_info(meta)
    base = m.base.path
    runs = runs if runs is not None else list(m.run_order)
    names = []
    for r in runs:
        p = m.run(r).path
        names.append(f"{r} ({_short_path(p)})" if p and _short_path(p) != r else str(r))
    line = f"base: {_short_path(base)}" if base else "base: (not recorded)"
    if names:
        shown = names if len(names) <= 6 else names[:6] + [f"+{len(names) - 6} more"]
        line += "  →  " + ", ".join(shown)
    return line


@contextmanager
def style():
    with matplotlib.rc_context(STYLE):
        yield


def new_figure(width: float, height: float) -> Figure:
    """A pyplot-free figure with constrained layout."""
    return Figure(figsize=(width, height), layout="constrained")


def titles(fig: Figure, title: str, meta: dict, runs: list[str] | None = None, note: str | None = None) -> None:
    """Title (what), subtitle (which checkpoints), and an optional footnote kept clear of the axes."""

    width = max(30, int(fig.get_figwidth() * 12))  # characters that fit at 10 pt
    title = "\n".join(textwrap.wrap(title, width)) or title
    sub = "\n".join(textwrap.wrap(checkpoints_line(meta, runs), int(width * 1.1)))
    fig.suptitle(f"{title}\n{sub}", fontsize=10, linespacing=1.5)
    if note:
        h = fig.get_figheight()
        nlines = note.count("\n") + 1
        frac = min(0.4, (0.1 + 0.16 * nlines) / h)
        fig.get_layout_engine().set(rect=(0, frac, 1, 1 - frac))
        fig.text(0.01, frac * 0.35, note, fontsize=7.5, color="#444444", ha="left", va="bottom")


def thin_ticks(n: int, axis_inches: float, fontsize: float = 8.0) -> int:
    """Label every k-th of `n` evenly spaced ticks so that labels never overlap (k from 1, 2, 5, 10, ...)."""
    if n <= 1:
        return 1
    spacing_pt = axis_inches * 72.0 / n
    need_k = (1.6 * fontsize) / max(spacing_pt, 1e-9)
    for k in (1, 2, 4, 5, 10, 20, 25, 50, 100, 200, 500, 1000):
        if k >= need_k:
            return k
    return int(math.ceil(need_k))


def numeric(s: pd.Series) -> pd.Series:
    return pd.to_numeric(s, errors="coerce").astype("float64")


def auto_log(values: np.ndarray, metric: str) -> bool:
    """Log scale for positive magnitudes spanning at least two orders of magnitude."""
    if is_share(metric) or metric in SIGNED:
        return False
    v = values[np.isfinite(values)]
    if v.size == 0 or (v < 0).any():
        return False
    pos = v[v > 0]
    return pos.size > 1 and pos.max() / pos.min() >= 100


def aggregate_cells(df: pd.DataFrame, keys: list[str], metric: str) -> tuple[pd.DataFrame, str | None]:
    """One value of `metric` per group of `keys`, combined correctly (norms from sums of squares, shares
    weighted by element count, cosines from summed dot products); other metrics: the median."""
    sizes = df.groupby(keys, dropna=False, sort=False, observed=True).size()
    if sizes.empty or sizes.max() <= 1:
        return df, None
    is_pair = "run" not in df.columns and all(k in df.columns for k in PAIR_KEYS)
    try:
        if not is_pair and metric in CHEAP:
            return aggregate_tensors(df, keys), None
        if is_pair and (metric in ("delta_cos", "sign_agree") or metric.startswith(("jaccard", "overlap"))):
            return aggregate_pairs(df, [k for k in keys if k not in PAIR_KEYS]), None
    except KeyError:
        pass
    g = df.assign(**{metric: numeric(df[metric])}).groupby(keys, dropna=False, sort=False, observed=True)
    return g[metric].median().reset_index(), f"{metric}: median over up to {int(sizes.max())} tensors per cell"


def sparsity_na(df: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, str | None]:
    """Cells of an aggregate sparsity figure whose every changed tensor has no sparsity counts (an adapter's factors
    without --merge-dtype): their value counts unchanged tensors only (100%) and would read as "nothing changed",
    so they are not drawn (NaN), and the note says so. Other metrics and tables: unchanged."""

    if not metric.startswith("sparsity_") or "n_sparsity_null" not in df.columns:
        return df, None
    na = np.array([sparsity_left_out(r)[1] for _, r in df.iterrows()], dtype=bool)
    if not na.any():
        return df, None
    df = df.copy()
    df.loc[na, metric] = np.nan
    return df, f"n/a in {int(na.sum())} cell(s): adapter factors have no sparsity counts"


def savefig(fig: Figure, path: str | os.PathLike, dpi: int = DPI) -> Path:
    """Write `fig` atomically (format from the suffix: .png at 150 dpi by default, .svg or .pdf)."""

    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("png", "svg", "pdf"):
        raise UpdeltaError(f"{path}: unknown figure type {path.suffix or '(none)'!r}; use .png, .svg or .pdf")
    with style(), atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi)
    return path


def as_array(v) -> np.ndarray | None:
    """A list/array cell as float64 array; None for missing or empty cells."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    try:
        a = np.asarray(v, dtype="float64").reshape(-1)
    except (TypeError, ValueError):
        return None
    return a if a.size else None


def capped(width: float, height: float) -> tuple[float, float]:
    """(width, height) in inches within the MAX_PX bound at DPI."""
    return min(width, MAX_IN), min(height, MAX_IN)


def marker_of(i: int) -> str:
    """The marker of the i-th series: colour cycles every 8 runs, the marker shifts, so that 64 runs differ."""
    return MARKERS[(i + i // len(RUN_COLORS)) % len(MARKERS)]


def unchanged_in(data, df: pd.DataFrame) -> list[str]:
    """Runs of `df` that are unchanged (every tensor bit-identical to the base), from the per-tensor table of a
    `Result` when `data` is one, else from `df` itself (per-tensor rows, or aggregates with n_unchanged)."""
    if hasattr(data, "tensors") and hasattr(data, "meta") and "run" in getattr(data, "tensors"):
        return unchanged_runs(data.tensors, towers_included(data.meta))
    if "run" not in df.columns or df.empty:
        return []
    if "n_unchanged" in df.columns and "n_tensors" in df.columns:
        same = pd.to_numeric(df["n_unchanged"], errors="coerce").eq(pd.to_numeric(df["n_tensors"], errors="coerce"))
    elif "ss_delta" in df.columns or "delta_fro" in df.columns:
        same = unchanged(df)
    else:
        return []
    return [str(r) for r, v in same.groupby(df["run"].astype(str), sort=False).all().items() if v]


def unchanged_note(runs: list[str]) -> str:
    """The one line that stands for the panels or lines of unchanged runs."""
    return f"{', '.join(runs)}: {UNCHANGED} (every compared element W1 == W0), not drawn"


def note_figure(title: str, text: str, meta: dict, runs: list[str] | None = None) -> Figure:
    """A small figure holding only a note (e.g. every run unchanged): said once, instead of empty panels."""
    with style():
        fig = new_figure(6.0, 2.2)
        ax = fig.subplots()
        ax.set_axis_off()
        ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=10, color="#444444", wrap=True,
                transform=ax.transAxes)
        titles(fig, title, meta, runs=runs)
    return fig


def facet_grid(n: int, k: int, rows: int, cell: tuple[float, float], pad: tuple[float, float],
               frame: tuple[float, float], max_cols: int | None = None,
               min_cell: tuple[float, float] = (0.0, 0.0)) -> tuple[int, int, float, float]:
    """(ncol, nrow, cell width, cell height) for `n` panels of `rows` x `k` cells, each panel with `pad`
    (width, height) inches of labels around its cells and the figure with `frame` inches of titles, colour bar and
    notes: the arrangement whose cells shrink least below the wanted `cell` size with the whole figure inside
    MAX_IN x MAX_IN (every panel shown; a very long grid gets small cells, never a larger figure), and among
    those the one closest to a 4:3 page."""
    best = None
    for ncol in range(1, (max_cols or n) + 1):
        nrow = math.ceil(n / ncol)
        if ncol > 1 and math.ceil(n / (ncol - 1)) == nrow:
            continue  # the same number of rows with fewer columns: no gain
        aw = (MAX_IN - frame[0]) / ncol - pad[0]
        ah = (MAX_IN - frame[1]) / nrow - pad[1]
        if aw <= 0 or ah <= 0:
            continue
        cw, ch = min(cell[0], aw / max(k, 1)), min(cell[1], ah / max(rows, 1))
        if (cw < min_cell[0] or ch < min_cell[1]) and ncol > 1:
            continue  # too narrow: fewer columns (one column is kept as the fallback)
        score = min(cw / cell[0], ch / cell[1])
        w, h = ncol * (k * cw + pad[0]) + frame[0], nrow * (rows * ch + pad[1]) + frame[1]
        key = (round(score, 2), -abs(math.log(w / h / 1.3)))  # largest cells; then closest to a 4:3 page
        if best is None or key > best[0]:
            best = (key, ncol, nrow, cw, ch)
    if best is None:
        return n, 1, 0.05, 0.02
    return best[1], best[2], best[3], best[4]
