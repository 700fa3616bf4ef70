"""`updelta compare BASE NAME=PATH...`: several fine-tunes of one base in one streaming pass."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from updelta.commands.common import RUN_BASE_HELP, emit, parse_runs
from updelta.commands.params import ENGINE_PANEL, with_options
from updelta.errors import UpdeltaError
from updelta.options import DiffOptions
from updelta.scan.runbases import parse_run_bases


@with_options(DiffOptions, panel=ENGINE_PANEL)
def compare(
    base: Annotated[str, typer.Argument(help="Base checkpoint every run started from.")],
    runs: Annotated[List[str], typer.Argument(help="Fine-tuned runs as NAME=PATH (pairs are ordered as given).")],
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Write every table as parquet into this folder.")] = None,
    as_json: Annotated[bool, typer.Option("--json", metavar="", help="Print the summaries as JSON instead of text.")] = False,
    run_base: Annotated[Optional[List[str]], typer.Option("--run-base", help=RUN_BASE_HELP)] = None,
    *, opts: DiffOptions,
) -> None:
    """Compare several fine-tunes of one base in one streaming pass."""
    from updelta.api import compare as run_compare  # fast --help: loaded when the command runs

    if out is not None and out.suffix:
        raise UpdeltaError(f"{out}: --out takes a folder for compare (no file suffix)")
    emit(run_compare(base, parse_runs(runs), opts, run_bases=parse_run_bases(run_base)), out, as_json)


def register(app: typer.Typer) -> None:
    app.command()(compare)
