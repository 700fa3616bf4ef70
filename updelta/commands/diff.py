"""`updelta diff BASE FINETUNED`: one fine-tuned checkpoint against its base (`updelta.api.diff`)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from updelta.commands.common import check_out, emit
from updelta.commands.params import ENGINE_PANEL, with_options
from updelta.options import DiffOptions


@with_options(DiffOptions, panel=ENGINE_PANEL)
def diff(
    base: Annotated[str, typer.Argument(help="Base checkpoint: HF folder, .safetensors, or .bin/.pt state dict.")],
    finetuned: Annotated[str, typer.Argument(help="Fine-tuned checkpoint, any of the same layouts.")],
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Write the per-tensor table: .parquet (options, summary, identities in its metadata), "
                            ".csv or .json; or a folder (no suffix): every table as parquet, as compare writes "
                            "(heads.parquet, neurons.parquet, ...).")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", metavar="", help="Print the whole-model summary as JSON instead of text.")] = False,
    *, opts: DiffOptions,
) -> None:
    """Diff one fine-tuned checkpoint against its base, tensor by tensor."""
    from updelta.api import diff as run_diff  # fast --help: loaded when the command runs

    if out is not None and out.suffix:  # no suffix: a folder of every table
        check_out(out, (".parquet", ".csv", ".json"))
    emit(run_diff(base, finetuned, opts), out, as_json)


def register(app: typer.Typer) -> None:
    app.command()(diff)
