"""`updelta diff BASE FINETUNED`: one fine-tuned checkpoint against its base (`updelta.api.diff`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..options import DiffOptions
from .common import check_out, summary_json
from .params import ENGINE_PANEL, with_options


@with_options(DiffOptions, panel=ENGINE_PANEL)
def diff(
    base: Annotated[str, typer.Argument(help="Base checkpoint: HF folder, .safetensors, or .bin/.pt state dict.")],
    finetuned: Annotated[str, typer.Argument(help="Fine-tuned checkpoint, any of the same layouts.")],
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Write the per-tensor table: .parquet (options, summary, identities in its metadata), "
                            ".csv or .json.")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the whole-model summary as JSON instead of text.")] = False,
    *, opts: DiffOptions,
) -> None:
    """Diff one fine-tuned checkpoint against its base, tensor by tensor."""
    from ..api import diff as run_diff
    from ..text import summary_text

    check_out(out, (".parquet", ".csv", ".json"))
    res = run_diff(base, finetuned, opts)
    if out is not None:
        res.save(out)
    if as_json:
        typer.echo(json.dumps(summary_json(res), indent=1, default=str))
    else:
        typer.echo(summary_text(res))
        if out is not None:
            typer.echo(f"\nwrote {out}")


def register(app: typer.Typer) -> None:
    app.command()(diff)
