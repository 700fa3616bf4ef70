"""The engine flags of `diff`, `compare`, `report`, `trajectory` are generated from `DiffOptions`: every field is a
flag in each command with the field's help and default; bad values fail before any file is read; the package never
imports `updelta.cli`; `updelta --version`."""
from __future__ import annotations

import ast
import dataclasses
import json
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import typer

import updelta
from clirun import run_main
from updelta.cli import app
from updelta.commands.params import NEGATE
from updelta.errors import UpdeltaError
from updelta.options import DiffOptions

ENGINE_COMMANDS = ("diff", "compare", "report", "trajectory")
PACKAGE = Path(updelta.__file__).parent


def _commands() -> dict:
    group = typer.main.get_command(app)
    return {name: group.commands[name] for name in ENGINE_COMMANDS}


def _by_name(cmd) -> dict:
    return {p.name: p for p in cmd.params}


@pytest.mark.parametrize("command", ENGINE_COMMANDS)
def test_every_field_is_a_flag_with_the_fields_help_and_default(command):
    params = _by_name(_commands()[command])
    for f in dataclasses.fields(DiffOptions):
        p = params.get(f.name)
        assert p is not None and p.param_type_name == "option", f"{command}: no flag for DiffOptions.{f.name}"
        flag = "--" + f.name.replace("_", "-")
        assert p.opts == [flag], (command, f.name, p.opts)
        if isinstance(f.default, bool):
            # --x and --no-x are both accepted; --help lists the one that changes the default
            neg = params.get(f.name + NEGATE)
            assert neg is not None and neg.opts == ["--no-" + flag[2:]] and not p.secondary_opts
            assert p.is_flag and neg.is_flag and p.default is False and neg.default is False
            shown, hidden = (neg, p) if f.default else (p, neg)
            assert hidden.hidden and not shown.hidden and shown.help.endswith(f.metadata["help"])
            assert shown.metavar == ""  # a flag takes no value: no <bool> placeholder in --help
            if f.default:  # the listed --no-x says that it turns the described default off
                assert shown.help.startswith(f"Turns off what {flag} (on by default) does: ")
            continue
        assert p.help == f.metadata["help"]
        if isinstance(f.default, tuple):
            assert p.multiple and tuple(p.default or ()) == f.default
        else:
            assert p.default == f.default and type(p.default) is type(f.default)


def test_the_four_commands_share_one_definition_of_each_flag():
    cmds = _commands()
    names = [f.name for f in dataclasses.fields(DiffOptions)]
    seen = {c: [(p.name, tuple(p.opts), tuple(p.secondary_opts), p.help, p.default, p.multiple)
                for p in cmd.params if p.name in names] for c, cmd in cmds.items()}
    assert [s[0] for s in seen["diff"]] == names  # in field order
    assert seen["compare"] == seen["report"] == seen["trajectory"] == seen["diff"]


def test_help_renders_every_flag(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "100")
    for command in ENGINE_COMMANDS:
        code, out, _ = run_main(monkeypatch, capsys, command, "--help")
        assert code == 0
        for f in dataclasses.fields(DiffOptions):
            flag = ("--no-" if f.default is True else "--") + f.name.replace("_", "-")
            assert flag in out, (command, f.name)
        assert "Engine options" in out


def test_bool_flags_both_ways_and_help_is_short(monkeypatch, capsys):
    from updelta.commands.params import build

    assert build(DiffOptions, {"progress": False, "progress" + NEGATE: True}).progress is False
    assert build(DiffOptions, {"progress": True, "progress" + NEGATE: False}).progress is True
    assert build(DiffOptions, {"progress": False, "progress" + NEGATE: False}).progress is True  # default
    assert build(DiffOptions, {"histogram": True}).histogram is True
    assert build(DiffOptions, {"histogram" + NEGATE: True}).histogram is False
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run_main(monkeypatch, capsys, "diff", "--help")
    assert code == 0 and "Engine options" in out
    assert len(out.splitlines()) <= 170, len(out.splitlines())  # 287 lines with a column of --no-x flags


def test_help_lists_flags_without_a_value_placeholder(monkeypatch, capsys):
    """`--no-progress <bool>  Show a progress bar on stderr.` read as the opposite of its help, with a value it does
    not take: every flag of ours is listed bare, and a listed --no-x says that it turns the default off."""
    monkeypatch.setenv("COLUMNS", "200")
    for command in ENGINE_COMMANDS:
        code, out, _ = run_main(monkeypatch, capsys, command, "--help")
        assert code == 0
        lines = [ln for ln in out.splitlines() if "--" in ln]
        bad = [ln for ln in lines if "<bool>" in ln and "--help" not in ln]  # --help is typer's own
        assert not bad, bad
        row = next(ln for ln in lines if "--no-progress" in ln)
        assert "Turns off what --progress (on by default) does: Show a progress bar on stderr." in row
        assert any("--histogram" in ln and "Count |W1 - W0|" in ln for ln in lines)


@pytest.mark.parametrize("overrides, needles", [
    ({"spectral": "x"}, ("--spectral 'x'", "off, fast, full")),
    ({"device": "tpu"}, ("--device", "auto, cpu, cuda")),
    ({"on_shape_mismatch": "pad"}, ("--on-shape-mismatch", "error, skip")),
    ({"executor": "processes"}, ("--executor", "serial, threads")),
    ({"atol": -1e-5}, ("--atol", ">= 0")),
    ({"eta": float("nan")}, ("--eta", ">= 0")),
    ({"topk": 0}, ("--topk", ">= 1")),
    ({"topk": 2.5}, ("--topk", "an integer")),
    ({"offprincipal_alpha": 1.0}, ("--offprincipal-alpha", "in (0, 1)")),
    ({"offprincipal_k": 0}, ("--offprincipal-k", ">= 1")),
    ({"intruder_k": 0}, ("--intruder-k", ">= 1")),
    ({"intruder_eps": 0.0}, ("--intruder-eps", "in (0, 1]")),
    ({"block_elems": 0}, ("--block-elems", ">= 1")),
    ({"workers": -1}, ("--workers", ">= 0")),
    ({"histogram": "yes"}, ("--histogram", "true or false")),
    ({"include": "layers.(0"}, ("--include 'layers.(0'", "regular expression")),
    ({"exclude": [3]}, ("--exclude 3", "string")),
])
def test_a_bad_option_fails_from_the_api_before_any_file_is_read(tmp_path, overrides, needles):
    missing = tmp_path / "no_such_checkpoint"
    with pytest.raises(UpdeltaError) as e:
        updelta.diff(missing, missing, **overrides)
    msg = str(e.value)
    assert "\n" not in msg and "no_such_checkpoint" not in msg
    for n in needles:
        assert n in msg, msg
    with pytest.raises(UpdeltaError):
        DiffOptions(**overrides)


@pytest.mark.parametrize("command", ENGINE_COMMANDS)
@pytest.mark.parametrize("args, needles", [
    (["--spectral", "sometimes"], ("--spectral", "off, fast, full")),
    (["--offprincipal-alpha", "1.5"], ("--offprincipal-alpha", "in (0, 1)")),
    (["--include", "("], ("--include", "regular expression")),
    (["--workers", "-1"], ("--workers", ">= 0")),
])
def test_a_bad_flag_is_one_line_and_exit_2_before_any_file_is_read(monkeypatch, capsys, tmp_path, command, args,
                                                                    needles):
    missing = tmp_path / "no_such_checkpoint"
    positional = {"diff": [missing, missing], "compare": [missing, f"a={missing}"],
                  "report": [missing, f"a={missing}", "--out", tmp_path / "rep"],
                  "trajectory": [missing, missing]}[command]
    code, out, err = run_main(monkeypatch, capsys, command, *positional, *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "no_such_checkpoint" not in err and all(n in err for n in needles), err
    assert not (tmp_path / "rep").exists()


def test_good_values_are_coerced_to_the_field_types():
    o = DiffOptions(include="a", exclude=["b", "c"], atol=0, workers=np.int64(2), spectral_float64=1)
    assert o.include == ("a",) and o.exclude == ("b", "c")
    assert o.atol == 0.0 and type(o.atol) is float and type(o.workers) is int and o.spectral_float64 is True
    assert o.replace(topk=3).topk == 3
    with pytest.raises(UpdeltaError, match="--topk"):
        o.replace(topk=-3)
    assert DiffOptions().as_dict()["include"] == []


def test_repeatable_flags_reach_the_options(monkeypatch, capsys, llama_pair):
    b, f, _, _ = llama_pair
    code, out, err = run_main(monkeypatch, capsys, "diff", b, f, "--spectral", "off", "--json", "--include", "mlp",
                              "--include", "attn", "--exclude", "layers.1", "--workers", "1", "--executor", "serial",
                              "--intruder-k", "3", "--no-progress")
    assert code == 0, err
    opts = json.loads(out)["options"]
    assert opts["include"] == ["mlp", "attn"] and opts["exclude"] == ["layers.1"]
    assert opts["workers"] == 1 and opts["executor"] == "serial" and opts["intruder_k"] == 3
    assert opts["progress"] is False


def test_version(monkeypatch, capsys):
    code, out, _ = run_main(monkeypatch, capsys, "--version")
    assert code == 0 and out.strip() == f"updelta {version('updelta')}"
    from updelta._version import __version__

    assert out.strip() == f"updelta {__version__}"


def _imported_modules(path: Path) -> set[str]:
    """Absolute names of the modules `path` imports (relative imports resolved), including `from X import name`
    as X.name (name may be a submodule)."""
    pkg = list(path.relative_to(PACKAGE.parent).parts[:-1])  # the package a relative import starts from
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = pkg[:len(pkg) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            names.add(mod)
            names |= {f"{mod}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            names.add(str(node.args[0].value))
    return names


def test_nothing_in_the_package_imports_the_cli():
    files = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "cli.py" or p.parent != PACKAGE)
    assert len(files) > 30
    offenders = {str(p.relative_to(PACKAGE)): sorted(m for m in _imported_modules(p)
                                                    if m == "updelta.cli" or m.startswith("updelta.cli."))
                 for p in files}
    assert {k: v for k, v in offenders.items() if v} == {}
    # the scan sees relative imports: commands/report.py imports updelta.commands.params
    assert "updelta.commands.params" in _imported_modules(PACKAGE / "commands" / "report.py")
    assert "updelta.errors" in _imported_modules(PACKAGE / "options.py")
