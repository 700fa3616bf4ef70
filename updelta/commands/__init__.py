"""The `updelta` commands, one module each; `commands.app` assembles them into the typer app.

Each command module exposes `register(app)`. Engine flags are generated from the fields of
`updelta.options.DiffOptions` by `params.with_options` (help, defaults and checks live on the fields);
shared helpers are in `common`. Heavy dependencies (torch, pandas, the trainer) are imported on use.
"""
from __future__ import annotations

from importlib import import_module

import typer

# In the order `updelta --help` lists them.
COMMANDS = ("diff", "compare", "train", "demo", "report", "trajectory", "plot", "base")


def register_all(app: typer.Typer) -> None:
    """Add every command to `app`."""

    for name in COMMANDS:
        import_module(f"{__name__}.{name}").register(app)
