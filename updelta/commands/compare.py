"""`updelta compare BASE NAME=PATH...`: several fine-tunes of one base in one streaming pass."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ..errors import UpdeltaError
from ..options import DiffOptions
from .common import parse_runs, summary_json
from .params import ENGINE_PANEL, with_options


@with_options(DiffOptions, panel=ENGINE_PANEL)
def compare(
    base: Annotated[str, typer.Argument(help="Base checkpoint every run started from.")],
    runs: Annotated[List[str], typer.Argument(help="Fine-tuned runs as NAME=PATH (pairs are ordered as given).")],
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Write every table as parquet into this folder.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summaries as JSON instead of text.")] = False,
    *, opts: DiffOptions,
) -> None:
    """Compare several fine-tunes of one base in one streaming pass."""
    from ..api import compare as run_compare
    from ..text import summary_text

    if out is not None and out.suffix:
        raise UpdeltaError(f"{out}: --out takes a folder for compare (no file suffix)")
    res = run_compare(base, parse_runs(runs), opts)
    if out is not None:
        res.save(out)
    if as_json:
        typer.echo(json.dumps(summary_json(res), indent=1, default=str))
    else:
        typer.echo(summary_text(res))
        if out is not None:
            typer.echo(f"\nwrote {out}/")


def register(app: typer.Typer) -> None:
    app.command()(compare)
