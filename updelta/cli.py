"""The `updelta` command line entry point: `main()` runs the app of `updelta.commands.app`.

Every `UpdeltaError` becomes one line on stderr and exit code 2 (no traceback); every `UpdeltaWarning` one line
`updelta: warning: ...`; Ctrl-C, at any moment from start-up on, is the line "updelta: interrupted" and exit code
130. This module imports almost nothing at start-up (the app and its commands are imported inside `main`), so an
interrupt during imports is handled too. Nothing in the package imports this module.
"""
from __future__ import annotations

import os
import sys

from updelta.commands.app import build_app
from updelta.errors import UpdeltaError, UpdeltaWarning

# The command line is a process of its own: idle OpenMP threads should sleep instead of spinning. On a
# shared 2-core machine spinning threads made torch's SVDs 10-20x slower (benchmarks/README.md). This must
# be set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _interrupted() -> None:
    """One line, then exit 130 at once: finally-blocks have already removed temporary files. os._exit, because
    CPython 3.11 re-raises SIGINT at exit (exit status -2) when the interrupt landed inside an exec'd string
    (dataclass creation during an import), even though it was handled."""
    sys.stdout.flush()
    sys.stderr.write("updelta: interrupted\n")
    sys.stderr.flush()
    os._exit(130)


def _show_warning(other, warning_class):
    def show(message, category, *args, **kwargs):
        if issubclass(category, warning_class):
            sys.stderr.write(f"updelta: warning: {message}\n")
        else:
            other(message, category, *args, **kwargs)
    return show


def main() -> None:
    try:
        import warnings  # loaded only on this path

    except KeyboardInterrupt:
        _interrupted()
    try:
        with warnings.catch_warnings():  # library warnings (Result.warnings) as one line each on stderr
            warnings.simplefilter("always", UpdeltaWarning)
            warnings.showwarning = _show_warning(warnings.showwarning, UpdeltaWarning)
            build_app()()
    except SystemExit as e:
        if e.code == 130:  # typer turns Ctrl-C (KeyboardInterrupt) into a silent exit 130
            _interrupted()
        raise
    except UpdeltaError as e:
        sys.stderr.write(f"updelta: {e}\n")
        sys.exit(2)
    except KeyboardInterrupt:
        _interrupted()


def __getattr__(name: str):
    if name == "app":  # `from updelta.cli import app` (tests, click tooling)
        return build_app()
    raise AttributeError(name)


if __name__ == "__main__":
    main()
