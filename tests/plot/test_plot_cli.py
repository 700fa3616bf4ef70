"""`updelta plot RESULT --kind ... --metric ... --out ...` on saved diff and compare results."""
from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

import ckpt
import updelta
from updelta.cli import app, main


def _commands(a) -> set[str]:
    return {c.name or c.callback.__name__ for c in a.registered_commands}


REGISTER = "updelta/cli.py must call updelta.commands.plot.register(app) (the `plot` command is not registered)"


@pytest.fixture(autouse=True)
def _plot_registered():
    if "plot" not in _commands(app):
        pytest.fail(REGISTER)


def test_plot_command_is_registered():
    assert "plot" in _commands(app), REGISTER


@pytest.fixture(scope="module")
def saved(real_compare, tmp_path_factory):
    """A compare folder and a single-run diff .parquet, as the CLI writes them."""
    tmp = tmp_path_factory.mktemp("saved")
    real_compare.save(tmp / "cmp")
    base = ckpt.llama_state(layers=2)
    diff = updelta.diff(str(ckpt.save(base, tmp / "b")), str(ckpt.save(ckpt.perturb(base), tmp / "f")),
                        spectral="off", name="ft")
    diff.save(tmp / "one.parquet")
    return tmp


@pytest.mark.parametrize("kind,metric", [("heatmap", "sparsity_atol"), ("layer_profile", None),
                                         ("run_similarity", "jaccard_atol"), ("distribution", None)])
def test_plot_kinds_write_png(saved, tmp_path, kind, metric):
    from PIL import Image

    out = tmp_path / f"{kind}.png"
    args = ["plot", str(saved / "cmp"), "--kind", kind, "--out", str(out)] + (["--metric", metric] if metric else [])
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert f"wrote {out}" in r.output
    with Image.open(out) as im:
        assert im.format == "PNG" and round(im.info["dpi"][0]) == 150 and im.size[0] > 600


def test_plot_tradeoff_with_eval_files(saved, tmp_path):
    ev = tmp_path / "eval.json"
    ev.write_text(json.dumps({"before": {"target_id": 0.1, "retention": 0.5},
                              "after": {"target_id": 0.3, "retention": 0.45}}))
    out = tmp_path / "t.svg"
    r = CliRunner().invoke(app, ["plot", str(saved / "cmp"), "--kind", "tradeoff", "--eval", f"sft={ev}",
                                 "--eval", f"grpo={ev}", "-o", str(out)])
    assert r.exit_code == 0, r.output
    svg = out.read_text()
    assert "<svg" in svg and "retention" in svg


def run_main(monkeypatch, capsys, args) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["updelta"] + args)
    with pytest.raises(SystemExit) as e:
        main()
    return e.value.code, capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--kind", "bogus"], "choose one of heatmap"),
    (["--kind", "heatmap", "--metric", "nope"], "not a column"),
    (["--kind", "spectrum"], "--spectral"),
    (["--kind", "tradeoff"], "no evaluations"),
    (["--kind", "heatmap", "--out", "fig.jpg"], "use .png"),
    (["--kind", "heatmap", "--run", "rl"], "not in the result"),
])
def test_plot_errors_are_one_line_exit_2(saved, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    code, err = run_main(monkeypatch, capsys, ["plot", str(saved / "cmp")] + args)
    assert code == 2 and message in err and "Traceback" not in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_plot_diff_parquet_and_its_limits(saved, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["plot", str(saved / "one.parquet")])  # default: heatmap -> heatmap.png here
    assert r.exit_code == 0, r.output
    assert (tmp_path / "heatmap.png").stat().st_size > 10_000
    code, err = run_main(monkeypatch, capsys, ["plot", str(saved / "one.parquet"), "--kind", "run_similarity"])
    assert code == 2 and "one.parquet" in err and "at least two runs" in err
    code, err = run_main(monkeypatch, capsys, ["plot", str(tmp_path / "missing.parquet")])
    assert code == 2 and "missing.parquet" in err
