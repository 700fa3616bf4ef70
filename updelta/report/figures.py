"""The report's figures: drawn by `updelta.plot` (the same functions as `updelta plot`), saved as PNG.

`make_figures` never fails the report: a figure that does not apply (no spectral columns, a
single run, no evaluations) or that the plot module cannot draw is listed with the reason,
and the report says which figures are missing.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import pandas as pd


@dataclass
class FigureOut:
    stem: str  # file name without suffix, under figures/
    caption: str
    png: bytes


@dataclass
class FigureMissing:
    stem: str
    caption: str
    reason: str
    error: bool = False  # True: the plot module failed (not merely: the figure does not apply)


def tradeoff_table(result, evals: dict) -> pd.DataFrame:
    """The whole-model summary with each run's evaluation: before_/after_/gain_<split>, method."""
    s = result.summary.copy()
    for run, e in evals.items():
        m = s["run"] == run
        for k in ("method", "task", "seed"):  # the run's group in the figures (updelta.plot.groups)
            if getattr(e, k, None) is not None:
                s.loc[m, k] = getattr(e, k)
        for k in e.splits:
            s.loc[m, f"before_{k}"] = e.before[k]
            s.loc[m, f"after_{k}"] = e.after[k]
            s.loc[m, f"gain_{k}"] = e.after[k] - e.before[k]
    return s


def plot_meta(result, evals: dict) -> dict:
    """The result's meta with each evaluated run's method, task and seed (`run_groups`): the figures colour runs by
    method, mark them by task and join seeds (updelta.plot.groups)."""
    groups = {r: {"method": e.method, "task": e.task, "seed": e.seed} for r, e in evals.items() if e.method}
    return {**(result.meta or {}), "run_groups": groups} if groups else (result.meta or {})


def _specs(result, evals: dict):
    """(stem, caption, plot function name, reason it does not apply or None, draw(function) -> Figure)."""
    M = plot_meta(result, evals)
    t = result.tensors
    multi = len(result.pairs_summary) > 0
    spectral = "topk_sv" in t.columns and t["topk_sv"].notna().any()
    hist = "hist" in t.columns and t["hist"].notna().any()
    heads = getattr(result, "heads", None)
    has_heads = heads is not None and not heads.empty
    heads_skip = (((result.meta or {}).get("pairing") or {}).get("heads") or {}).get("skipped")
    return [
        ("heatmap_rel_delta", "Relative update ||D||/||W0|| per layer and module", "heatmap", None,
         lambda f: f(result, "rel_delta")),
        ("heatmap_sparsity_atol", "Share of elements unchanged (atol) per layer and module", "heatmap", None,
         lambda f: f(result, "sparsity_atol")),
        ("layer_profile_rel_delta", "Relative update per layer, one line per run", "layer_profile", None,
         lambda f: f(result, "rel_delta", meta=M)),
        ("layer_profile_sparsity_atol", "Share unchanged (atol) per layer, one line per run", "layer_profile", None,
         lambda f: f(result, "sparsity_atol", meta=M)),
        ("run_similarity_delta_cos", "Delta cosine between runs (whole model)", "run_similarity",
         None if multi else "needs at least two runs", lambda f: f(result, "delta_cos")),
        ("run_similarity_jaccard_atol", "Jaccard of changed-element masks (atol) between runs", "run_similarity",
         None if multi else "needs at least two runs", lambda f: f(result, "jaccard_atol")),
        ("heads_energy_share", "Each attention head's share of its module's update energy, relative to an even "
         "share (1 = even)", "heads_heatmap",
         None if has_heads else f"no per-head rows ({heads_skip or 'no attention heads'})",
         lambda f: f(result, "energy_vs_even")),
        ("spectrum", "Singular values of the updates", "spectrum",
         None if spectral else "no spectral columns (computed with --spectral off)", lambda f: f(result, meta=M)),
        ("distribution", "Distribution of |D|", "distribution",
         None if hist else "no |D| histograms (compute with --histogram)", lambda f: f(result, meta=M)),
        ("tradeoff", "Gain against update size, with measured retention", "tradeoff",
         None if evals else "no evaluations given (--eval NAME=FILE.json)",
         lambda f: f(tradeoff_table(result, evals), meta=result.meta)),
    ]


def _png(P, fig) -> bytes:
    """PNG bytes in the plot layer's style, at its resolution (150 dpi)."""
    buf = io.BytesIO()
    with P.style():
        fig.savefig(buf, format="png", dpi=P.DPI)
    return buf.getvalue()


def make_figures(result, evals: dict | None = None) -> tuple[list[FigureOut], list[FigureMissing]]:
    """Draw every figure that applies; (drawn, missing with reasons)."""
    evals = evals or {}
    specs = _specs(result, evals)
    try:
        from updelta import plot as P  # matplotlib: loaded only when figures are drawn
    except Exception as e:  # noqa: BLE001 - the plot module is optional for the report
        why = f"updelta.plot is not available ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
        return [], [FigureMissing(stem, cap, why, True) for stem, cap, _, _, _ in specs]
    done, missing = [], []
    for stem, cap, fn, skip, draw in specs:
        if skip:
            missing.append(FigureMissing(stem, cap, skip))
        elif not hasattr(P, fn):
            missing.append(FigureMissing(stem, cap, f"updelta.plot has no {fn}()", True))
        else:
            try:
                done.append(FigureOut(stem, cap, _png(P, draw(getattr(P, fn)))))
            except Exception as e:  # noqa: BLE001 - one figure must not sink the report
                msg = str(e).splitlines()[0][:200] if str(e) else ""
                missing.append(FigureMissing(stem, cap, f"{type(e).__name__}: {msg}", True))
    return done, missing
