"""The `updelta` command line: assembles the commands of `updelta.commands` into one typer app.

`main()` is the entry point: every `UpdeltaError` becomes one line on stderr and exit code 2 (no
traceback); Ctrl-C is "updelta: interrupted" and exit code 130. Nothing in the package imports this module.
"""
from __future__ import annotations

import os

# The command line is a process of its own: idle OpenMP threads should sleep instead of spinning. On a
# shared 2-core machine spinning threads made torch's SVDs 10-20x slower (benchmarks/README.md). This must
# be set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import sys  # noqa: E402
from typing import Annotated  # noqa: E402

import typer  # noqa: E402

from ._version import __version__  # noqa: E402
from .commands import register_all  # noqa: E402
from .errors import UpdeltaError  # noqa: E402

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Measure how post-training changed a language model's weights.")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"updelta {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """Measure how post-training changed a language model's weights."""


register_all(app)


def main() -> None:
    try:
        app()
    except SystemExit as e:
        if e.code == 130:  # typer turns Ctrl-C (KeyboardInterrupt) into a silent exit 130
            typer.echo("updelta: interrupted", err=True)
        raise
    except UpdeltaError as e:
        typer.echo(f"updelta: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("updelta: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
