"""The `updelta` typer app: every command of `updelta.commands`, plus `--version`."""
from __future__ import annotations

from typing import Annotated

import typer

from updelta._version import __version__
from updelta.commands import register_all


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"updelta {__version__}")
        raise typer.Exit()


def build_app() -> typer.Typer:
    app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                      help="Measure how post-training changed a language model's weights.")

    @app.callback()
    def _root(version: Annotated[bool, typer.Option("--version", metavar="", callback=_print_version, is_eager=True,
                                                    help="Print the version and exit.")] = False) -> None:
        """Measure how post-training changed a language model's weights."""

    register_all(app)
    return app
