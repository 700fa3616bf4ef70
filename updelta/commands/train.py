"""`updelta train ...`: hands its arguments to the trainer's own typer app (`updelta.train.cli`)."""
from __future__ import annotations

import typer

from updelta.errors import UpdeltaError


def train(ctx: typer.Context) -> None:
    """Train pretrain/SFT/DFT/GRPO/ES runs on a small built-in model (`updelta train --help`)."""
    # Imported on use: transformers takes seconds and ~150 MB to import, which `diff` must not pay.
    try:
        from updelta.train.cli import app as train_app  # fast --help: loaded when the command runs
    except ImportError as e:
        raise UpdeltaError(f"the trainer needs the train extra: pip install 'updelta[train]' ({e})") from None
    typer.main.get_command(train_app).main(args=ctx.args, prog_name="updelta train")


def register(app: typer.Typer) -> None:
    app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
                add_help_option=False)(train)
