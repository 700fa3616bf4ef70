"""`updelta trajectory BASE CHECKPOINT... [--out DIR]`: every metric against training step, and the
cosine between consecutive updates (see `updelta.tables.trajectory`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from updelta.commands.params import ENGINE_PANEL, with_options
from updelta.errors import UpdeltaError
from updelta.options import DiffOptions


@with_options(DiffOptions, panel=ENGINE_PANEL)
def trajectory(
    base: Annotated[str, typer.Argument(help="The checkpoint training started from.")],
    checkpoints: Annotated[List[str], typer.Argument(
        help="Checkpoints of one run: folders, files or a glob such as 'out/checkpoint-*' (quoted or not), "
             "or a folder holding checkpoint-* folders; ordered by the step number in each name.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder to write trajectory.parquet into "
                                                                    "(other files there are kept).")] = None,
    as_json: Annotated[bool, typer.Option("--json", metavar="", help="Print the whole-model rows as JSON.")] = False,
    *, opts: DiffOptions,
) -> None:
    """Every metric of each checkpoint against the base, by training step, in one streaming pass.

    Also the updates between consecutive checkpoints: their norm, and the cosine between consecutive updates."""
    from updelta.api import trajectory as run_trajectory  # fast --help: loaded when the command runs
    from updelta.report.text import trajectory_text  # fast --help: loaded when the command runs
    from updelta.tables.trajectory import find_checkpoints  # fast --help: loaded when the command runs

    if out is not None and out.exists() and not out.is_dir():
        raise UpdeltaError(f"{out}: --out takes a folder (trajectory.parquet is written into it)")
    find_checkpoints(checkpoints)  # names and steps checked before any reading
    t = run_trajectory(base, checkpoints, opts)
    path = t.save(out) if out is not None else None
    if as_json:
        m = t.model().drop(columns=[c for c in ("hist", "topk_sv") if c in t.table.columns], errors="ignore")
        typer.echo(json.dumps(json.loads(m.to_json(orient="records")), indent=1))
    else:
        typer.echo(trajectory_text(t))
        if path is not None:
            typer.echo(f"\nwrote {path}")


def register(app: typer.Typer) -> None:
    """Add the `trajectory` command to the `updelta` app."""
    app.command()(trajectory)
