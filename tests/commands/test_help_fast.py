"""`updelta --help` and `updelta report --help` stay fast: neither pandas, matplotlib nor torch is imported (a fresh
process checks sys.modules; the layout moved gates into the report package, whose re-exports are lazy for this)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

CODE = r"""
import contextlib, io, json, sys
from updelta.cli import main
sys.argv = ["updelta", *sys.argv[1:]]
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main()
    except SystemExit:
        pass
print(json.dumps({m: m in sys.modules for m in ("pandas", "matplotlib", "torch")}))
"""


@pytest.mark.parametrize("args", [["--help"], ["report", "--help"], ["diff", "--help"]])
def test_help_loads_no_heavy_library(args):
    out = subprocess.run([sys.executable, "-c", CODE, *args], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"pandas": False, "matplotlib": False, "torch": False}
