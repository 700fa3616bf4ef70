"""`updelta report`: compare runs (or load a saved compare) and write the report, evaluating gates.

Exit codes: 0 report written and every gate passes; 1 report written, a gate failed (the
offenders are printed and marked in the report); 2 bad input (malformed gate, unknown metric,
selector matching nothing, unreadable eval file, an eval file of another base than its run's, ...), raised
before any output is written.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from updelta.commands.common import RUN_BASE_HELP, parse_runs
from updelta.commands.params import ENGINE_PANEL, with_options
from updelta.errors import UpdeltaError
from updelta.options import DiffOptions, ReportOptions
from updelta.report.gates import GRAMMAR, check_runs, parse_gates
from updelta.scan.runbases import parse_run_bases


def _esc(s: str) -> str:
    """Escape '[' for typer's rich help rendering (it would read [@SELECTOR] as markup)."""
    return s.replace("[", "\\[")


HELP = _esc(
    "Write report.md (for a CI job summary), report.html (self-contained), figures/, tables/ and summary.json.\n\n"
    "Either BASE NAME=PATH ... (compared now, one streaming pass) or --from DIR (a folder written by "
    "`updelta compare --out`, or a trajectory table: one run per step). Exit code 1 when a gate fails (the report is still written), 2 on bad input "
    "(nothing written).\n\n"
    f"Gates (--gate, repeatable): {GRAMMAR}.\n\n"
    "Without AGG, a gate whose selector has component=, layer= or name= applies to each run's aggregate over those "
    "tensors. A cross-run metric (delta_cos, jaccard_*, overlap_*, sign_agree) applies to each pair of runs "
    "(select with a run name, or a/b for one pair). An undefined value (NaN) fails.")


@with_options(DiffOptions, panel=ENGINE_PANEL)
@with_options(ReportOptions, param="report_opts")
def report(
    checkpoints: Annotated[Optional[List[str]], typer.Argument(
        help="BASE NAME=PATH [NAME=PATH ...]: the base and the runs to compare (leave out with --from).",
        show_default=False)] = None,
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Report folder (created; a previous report there is replaced; any other non-empty "
                            "folder is refused).")] = ...,
    from_: Annotated[Optional[Path], typer.Option("--from", help="A folder written by `updelta compare --out`, or a "
                                                                 "trajectory table (trajectory.parquet or its folder) "
                                                                 "(engine options are then ignored).")] = None,
    eval_: Annotated[Optional[List[str]], typer.Option(
        "--eval", help="NAME=FILE.json: a run's evaluation (the trainer's eval.json with before/after accuracies "
                       "per split), shown beside its geometry as gains after - before (repeatable). Its base (base_fingerprint, "
                       "else base) must be the base NAME is compared against (--run-base, else BASE); see "
                       "--eval-base-mismatch.")] = None,
    gate: Annotated[Optional[List[str]], typer.Option(
        "--gate", help=_esc("[AGG:]METRIC OP VALUE[@SELECTOR]") + ", e.g. 'rel_delta<=0.05', "
                       "'sparsity_atol>=0.5@grpo', 'max:rel_delta<=0.2@component=attn' (repeatable; see above).")
    ] = None,
    figures: Annotated[bool, typer.Option("--figures/--no-figures", metavar="", help="Draw the figures (the slowest "
                                                                       "part of a small report).")] = True,
    run_base: Annotated[Optional[List[str]], typer.Option("--run-base", help=RUN_BASE_HELP)] = None,
    *, opts: DiffOptions, report_opts: ReportOptions,
):

    # Everything that can be checked without reading a checkpoint, before reading one.
    from updelta.api import base_identities, compare  # fast --help: pandas and the engine when the command runs
    from updelta.report import check_out_dir, write_report  # fast --help: loaded when the command runs
    from updelta.tables.evals import check_bases, check_names, parse_eval_specs  # fast --help: pandas on use
    from updelta.tables.trajectory import load_result as load  # fast --help: loaded when the command runs

    gates = parse_gates(gate or [])
    evals = parse_eval_specs(eval_ or [])
    run_bases = parse_run_bases(run_base)
    args = list(checkpoints or [])
    if from_ is not None and args:
        raise UpdeltaError("give either BASE NAME=PATH ... or --from DIR, not both")
    if from_ is None and len(args) < 2:
        raise UpdeltaError("give the base and at least one run (BASE NAME=PATH ...), or --from DIR "
                           "(a folder written by `updelta compare --out`)")
    if from_ is not None and run_bases:
        raise UpdeltaError("--run-base applies when the runs are compared now; a result read with --from keeps the "
                           "bases it was compared with (pass --run-base to `updelta compare`)")
    check_out_dir(out, protect=(from_,))
    if from_ is not None:

        res = load(from_)
        check_runs(gates, res.runs)
        check_names(evals, res.runs)
    else:
        runs = parse_runs(args[1:])
        check_runs(gates, list(runs))
        check_names(evals, list(runs))

        if evals:  # the evaluation-base check before the pass (headers only); write_report states the warnings
            check_bases(evals, base_identities(args[0], runs, run_bases, opts), report_opts.eval_base_mismatch)
        res = compare(args[0], runs, opts, run_bases=run_bases)
    outcome = write_report(res, out, evals=evals, gates=gates, figures=figures, options=report_opts)
    for g in outcome.gates:
        typer.echo(g.describe(limit=20))
    for m in outcome.missing_figures:
        if m.error:
            typer.echo(f"updelta: figure {m.stem} not drawn: {m.reason}", err=True)
    typer.echo(f"wrote {out}/report.md, report.html, summary.json, "
               f"{len(outcome.figures)} figures, tables/")
    if not outcome.passed:
        typer.echo(f"updelta: {len(outcome.failed)} gate(s) failed: "
                   + ", ".join(g.gate.expr for g in outcome.failed), err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the `report` command to the `updelta` app."""
    app.command(help=HELP)(report)
