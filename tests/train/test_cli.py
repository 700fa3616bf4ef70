"""`updelta train ...`: bad input is one line on stderr with exit code 2; a quick run works end to end."""
import json

import pytest
from typer.testing import CliRunner

from updelta.train.cli import app


def _invoke(*args):
    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize("args, needle", [
    (["sft", "--base", "{tmp}/missing", "--out", "{tmp}/run"], "missing"),
    (["dft", "--task", "poetry", "--out", "{tmp}/run"], "task 'poetry'"),
    (["grpo", "--aggregation", "mean", "--out", "{tmp}/run"], "aggregation 'mean'"),
    (["es", "--save-dtype", "fp8", "--out", "{tmp}/run"], "save dtype 'fp8'"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, args, needle):
    result = _invoke(*[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and needle in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_refuses_to_replace_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    result = _invoke("sft", "--quick", "--out", str(tmp_path))
    assert result.exit_code == 2 and "refusing" in result.stderr
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_quick_run_and_help_from_the_options(tmp_path):
    result = _invoke("sft", "--quick", "--eval-items", "4", "--steps", "2", "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    assert "wrote" in result.stdout
    record = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert record["options"]["steps"] == 2 and record["options"]["quick"] is True
    help_text = _invoke("dft", "--help").stdout
    assert "--prob-floor" in help_text and "--weight-decay" in help_text
