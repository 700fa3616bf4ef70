"""Run the real `updelta` entry point (`updelta.cli.main`) in this process, as the tests' one way to call the CLI."""
from __future__ import annotations

import sys


def run_main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """`updelta ARGS...` -> (exit code, stdout, stderr)."""
    from updelta.cli import main

    monkeypatch.setattr(sys, "argv", ["updelta", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err
