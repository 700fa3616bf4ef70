"""Figures from result tables: each function takes a `Result` (or the relevant DataFrame plus `meta`)
and returns a `matplotlib.figure.Figure`. Nothing here calls `plt.show()` or touches pyplot's global
state; the caller saves (`savefig(fig, "out.png")`, 150 dpi) or displays the figure.

    import updelta, updelta.plot as up
    r = updelta.load("runs.cmp/")                 # or updelta.compare(...)
    up.heatmap(r, "rel_delta")                    # layers x modules, one panel per run
    up.experts_heatmap(r, "rel_delta")            # layers x routed experts (mixture-of-experts models)
    up.heads_heatmap(r)                           # layers x attention heads, share vs an even one (Result.heads)
    up.layer_profile(r, "sparsity_atol")          # metric per layer, one line per run
    up.run_similarity(r, "jaccard_atol")          # cross-run matrix with random baselines
    up.spectrum(r)                                # needs spectral="fast"/"full"
    up.distribution(r)                            # needs histogram=True
    up.tradeoff(with_evals(r.summary, {"sft": "runs/sft/eval.json"}))

Missing inputs (no cross-run table, no `topk_sv`, no `hist`, no evaluation columns) raise
`UpdeltaError` with a one-line fix. Colours: viridis for magnitudes, RdBu (centred at 0) for signed
values, Okabe-Ito for runs (a run keeps its colour across figures).
"""
from __future__ import annotations

import pandas as pd

from updelta.plot.common import DPI, savefig, style
from updelta.plot.experts import experts_heatmap
from updelta.plot.grids import heatmap, run_similarity
from updelta.plot.heads import heads_heatmap
from updelta.plot.lines import distribution, layer_profile, spectrum, tradeoff
from updelta.tables.evals import check_names, load_evals

__all__ = ["heatmap", "experts_heatmap", "heads_heatmap", "layer_profile", "run_similarity", "spectrum", "distribution", "tradeoff", "savefig",
           "with_evals", "style", "DPI"]


def with_evals(summary: pd.DataFrame, evals: dict) -> pd.DataFrame:
    """`summary` with `gain_<split>` = after - before per run, from each run's evaluation
    ({run: path to eval.json | run folder | parsed dict | `updelta.tables.evals.Evaluation`}, read by
    `updelta.tables.evals.load_evals`). Runs without an evaluation get NaN."""

    evs = load_evals(evals)
    check_names(evs, [str(r) for r in summary["run"]])
    gains = pd.DataFrame([{"run": str(r), **{f"gain_{k}": v for k, v in e.gains.items()}} for r, e in evs.items()])
    if gains.empty:
        return summary.copy()
    base = summary.drop(columns=[c for c in gains.columns if c != "run" and c in summary.columns])
    return base.assign(run=base["run"].astype(str)).merge(gains, on="run", how="left")
