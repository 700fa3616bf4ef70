"""`updelta plot RESULT --kind ... --metric ... --out fig.png`: one figure from a saved result.

Registered on the main typer app by `register(app)` (`updelta.commands.register_all`). The figure
functions live in `updelta.plot`; this is a thin wrapper that loads the result, checks the options
and writes the file (PNG at 150 dpi, or .svg/.pdf).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from updelta.errors import UpdeltaError
from updelta.tables.evals import parse_eval_specs

KINDS = ("heatmap", "experts", "heads", "layer_profile", "run_similarity", "spectrum", "distribution", "tradeoff")
DEFAULT_METRIC = {"heatmap": "rel_delta", "experts": "rel_delta", "heads": "energy_vs_even", "layer_profile": "rel_delta", "run_similarity": "delta_cos",
                  "tradeoff": "rel_delta"}


def make_figure(result, kind: str, metric: Optional[str] = None, runs: Optional[list[str]] = None,
                bias: bool = False, scale: str = "auto", evals: Optional[dict] = None):
    """The figure `updelta plot` draws: `kind` with its `metric` (heatmap/experts/layer_profile: a table column;
    run_similarity: delta_cos|sign_agree|jaccard[_conv]|overlap[_conv]; tradeoff: the x column)."""
    from updelta import plot as up  # fast --help: loaded when the command runs

    if kind not in KINDS:
        raise UpdeltaError(f"--kind {kind!r}: choose one of {', '.join(KINDS)}")
    if scale not in ("auto", "log", "linear"):
        raise UpdeltaError(f"--scale {scale!r}: choose auto, log or linear")
    if metric is not None and kind in ("spectrum", "distribution"):
        raise UpdeltaError(f"--metric does not apply to --kind {kind}; leave it out")
    if evals and kind != "tradeoff":
        raise UpdeltaError("--eval applies to --kind tradeoff only")
    metric = metric or DEFAULT_METRIC.get(kind)
    log = None if scale == "auto" else scale == "log"
    runs = list(runs) if runs else None
    if kind == "heatmap":
        return up.heatmap(result, metric, runs=runs, params=("weight", "bias") if bias else ("weight",), log=log)
    if kind == "experts":
        return up.experts_heatmap(result, metric, runs=runs, log=log)
    if kind == "heads":
        return up.heads_heatmap(result, metric, runs=runs, log=log)
    if kind == "layer_profile":
        return up.layer_profile(result, metric, runs=runs, log=log)
    if kind == "run_similarity":
        if runs and "run_a" in result.pairs.columns:
            pairs = result.pairs[result.pairs["run_a"].isin(runs) & result.pairs["run_b"].isin(runs)]
            return up.run_similarity(pairs, metric, meta=result.meta)
        return up.run_similarity(result, metric)
    if kind == "spectrum":
        return up.spectrum(result, runs=runs, params=("weight", "bias") if bias else ("weight",))
    if kind == "distribution":
        return up.distribution(result, runs=runs)
    summary = result.summary
    if evals:
        summary = up.with_evals(summary, evals)
    if runs:
        summary = summary[summary["run"].isin(runs)]
    return up.tradeoff(summary, x=metric, meta=result.meta)


def register(app: typer.Typer) -> None:
    """Add the `plot` command to the `updelta` app."""

    @app.command()
    def plot(
        result: Annotated[Path, typer.Argument(help="A .parquet written by `updelta diff --out`, a folder "
                                                    "written by `updelta diff/compare --out DIR`, or a trajectory "
                                                    "table (trajectory.parquet or its folder: one run per step).")],
        kind: Annotated[str, typer.Option("--kind", "-k", help="heatmap, experts (layer x expert), heads (layer x "
                                                               "attention head, per module), layer_profile, "
                                                               "run_similarity, spectrum, distribution or "
                                                               "tradeoff.")] = "heatmap",
        metric: Annotated[Optional[str], typer.Option(
            "--metric", "-m", help="heatmap/experts/layer_profile: a column (default rel_delta; e.g. sparsity_atol, "
                                   "cos_delta_base, delta_cos); run_similarity: delta_cos, sign_agree, jaccard, "
                                   "overlap, optionally _exact/_atol/_rtol (default delta_cos); tradeoff: the "
                                   "update-size column (default rel_delta).")] = None,
        out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Figure file: .png (150 dpi), .svg or "
                                                                        ".pdf. Default: KIND.png here.")] = None,
        run: Annotated[Optional[List[str]], typer.Option("--run", help="Only this run (repeatable).")] = None,
        bias: Annotated[bool, typer.Option("--bias/--no-bias", metavar="", help="heatmap, spectrum: add bias columns.")] = False,
        scale: Annotated[str, typer.Option("--scale", help="Colour/y scale: auto (log when values span >= 100x), "
                                                           "log or linear.")] = "auto",
        eval_: Annotated[Optional[List[str]], typer.Option(
            "--eval", help="tradeoff: RUN=PATH of a run's eval.json ({before: {...}, after: {...}}); "
                           "gains are after - before (repeatable).")] = None,
    ):
        """Draw one figure from a saved diff/compare result or trajectory table."""
        from updelta.plot import savefig  # fast --help: loaded when the command runs
        from updelta.tables.trajectory import load_result as load  # fast --help: loaded when the command runs

        out = out or Path(f"{kind}.png")
        if out.suffix.lower() not in (".png", ".svg", ".pdf"):
            raise UpdeltaError(f"{out}: unknown figure type {out.suffix or '(none)'!r}; use .png, .svg or .pdf")

        evals = parse_eval_specs(eval_)
        res = load(result)
        try:
            fig = make_figure(res, kind, metric, run, bias, scale, evals or None)
        except UpdeltaError as e:
            raise UpdeltaError(f"{result}: {e}") from None
        savefig(fig, out)
        typer.echo(f"wrote {out}")
