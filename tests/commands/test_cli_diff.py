"""`updelta diff` end to end: outputs, JSON, exit codes and one-line errors without partial files."""
import json
import os
import subprocess
import sys

import pytest
import torch

import ckpt
from clirun import run_main as run_cli


def test_diff_text_summary(monkeypatch, capsys, llama_pair):
    b, f, _, _ = llama_pair
    code, out, err = run_cli(monkeypatch, capsys, "diff", b, f, "--spectral", "off")
    assert code == 0
    assert "Whole model" in out and "Per component" in out and "Top 10 tensors" in out
    assert "exact: W1 == W0" in out and "atol: |D| <= 1e-05" in out  # conventions named


def test_diff_json_and_parquet(monkeypatch, capsys, llama_pair, tmp_path):
    b, f, base, ft = llama_pair
    out_file = tmp_path / "o.parquet"
    code, out, _ = run_cli(monkeypatch, capsys, "diff", b, f, "--spectral", "off", "--json", "--out", out_file)
    assert code == 0 and out_file.exists()
    js = json.loads(out)
    w0 = torch.cat([v.double().reshape(-1) for v in base.values()])
    w1 = torch.cat([ft[k].double().reshape(-1) for k in base])
    assert js["summary"][0]["delta_fro"] == pytest.approx(float((w1 - w0).norm()), rel=1e-6)
    assert {c["component"] for c in js["components"]} == {"attn", "mlp", "norm", "embed", "head"}
    assert js["options"]["eta"] == 1e-3


def _assert_clean_failure(code, out, err, *needles):
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def test_bad_inputs_exit_2_with_one_line_and_no_output(monkeypatch, capsys, tmp_path):
    good = ckpt.save(ckpt.llama_state(), tmp_path / "good")
    empty = tmp_path / "empty"
    empty.mkdir()
    sharded = ckpt.save(ckpt.llama_state(), tmp_path / "sharded", shards=2)
    os.remove(sharded / "model-00001-of-00002.safetensors")
    trunc = ckpt.save(ckpt.llama_state(), tmp_path / "t.safetensors")
    trunc.write_bytes(trunc.read_bytes()[:-100])
    pick = tmp_path / "p.bin"
    torch.save({"w": torch.ones(1), "meta": {1, 2}}, pick)
    wrong = dict(ckpt.llama_state())
    wrong["model.layers.0.mlp.up_proj.weight"] = torch.zeros(5, 5, dtype=torch.bfloat16)
    wrong = ckpt.save(wrong, tmp_path / "wrong")
    cases = [
        (tmp_path / "missing", ["missing", "no such file"]),
        (empty, ["empty", "no weights found"]),
        (sharded, ["index.json", "model-00001-of-00002.safetensors"]),
        (trunc, ["t.safetensors", "truncated"]),
        (pick, ["p.bin", "not a tensor"]),
        (wrong, ["up_proj.weight", "[5, 5]", "[32, 16]"]),
    ]
    for i, (bad, needles) in enumerate(cases):
        out_file = tmp_path / f"o{i}.parquet"
        code, out, err = run_cli(monkeypatch, capsys, "diff", good, bad, "--out", out_file, "--spectral", "off")
        _assert_clean_failure(code, out, err, *needles)
        assert not out_file.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_bad_options_exit_2(monkeypatch, capsys, llama_pair, tmp_path):
    b, f, _, _ = llama_pair
    code, out, err = run_cli(monkeypatch, capsys, "diff", b, f, "--spectral", "sometimes")
    _assert_clean_failure(code, out, err, "--spectral", "off, fast, full")
    code, out, err = run_cli(monkeypatch, capsys, "diff", b, f, "--out", tmp_path / "x.xlsx")
    _assert_clean_failure(code, out, err, "x.xlsx")


def test_nonfinite_warns_and_exits_0(monkeypatch, capsys, tmp_path):
    b = ckpt.save({"w": torch.tensor([1.0, 2.0, 3.0])}, tmp_path / "b.safetensors")
    f = ckpt.save({"w": torch.tensor([1.0, float("nan"), 3.5])}, tmp_path / "f.safetensors")
    code, out, err = run_cli(monkeypatch, capsys, "diff", b, f, "--spectral", "off")
    assert code == 0 and "non-finite" in err and "w (f: base 0, ft 1)" in err


def test_console_script_end_to_end(llama_pair, tmp_path):
    """The installed `updelta` entry point, as a user runs it: real process, real exit codes."""
    b, f, _, _ = llama_pair
    exe = os.path.join(os.path.dirname(sys.executable), "updelta")
    ok = subprocess.run([exe, "diff", str(b), str(f), "--spectral", "off", "--out", str(tmp_path / "o.csv")],
                        capture_output=True, text=True, env={**os.environ, "UPDELTA_PROGRESS": "0"})
    assert ok.returncode == 0 and (tmp_path / "o.csv").exists(), ok.stderr
    bad = subprocess.run([exe, "diff", str(b), str(tmp_path / "nope")], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "nope" in bad.stderr
