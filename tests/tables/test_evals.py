"""The evaluation-base check (updelta/evals.py `check_bases`, `report --eval`, `--eval-base-mismatch`).

An eval.json names the checkpoint its run started from (`base`, `base_fingerprint`); the report checks it against
the base the run is compared against (its --run-base, else the common base): on the fingerprint; on the path, with
a warning, when there is no fingerprint; a warning when there is neither.
"""
from __future__ import annotations

import json

import pytest
import torch

import ckpt
from clirun import run_main
from updelta.errors import EvaluationError
from updelta.tables.evals import Evaluation, check_bases, load_eval
from updelta.io import open_checkpoint

ACC = {"before": {"target_id": 0.25}, "after": {"target_id": 0.5}}


def ev(path="runs/rl/eval.json", **kw) -> Evaluation:
    return Evaluation(path=path, before=ACC["before"], after=ACC["after"], **kw)


BASE = {"path": "/ck/base", "fingerprint": "aaaa"}
SFT = {"path": "/ck/sft", "fingerprint": "bbbb"}


def test_fingerprint_match_passes_silently():
    assert check_bases({"rl": ev(base="/elsewhere/base", base_fingerprint="aaaa")}, {"rl": BASE}) == []


def test_fingerprint_mismatch_is_one_line_error_naming_file_bases_and_fixes():
    with pytest.raises(EvaluationError) as e:
        check_bases({"rl": ev(base="/ck/sft", base_fingerprint="bbbb")}, {"rl": BASE})
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("runs/rl/eval.json: run rl was trained from base /ck/sft "
                                              "(fingerprint bbbb) but is compared against /ck/base (fingerprint aaaa)")
    assert msg.endswith("pass --run-base rl=/ck/sft to measure it from its own base, or --eval-base-mismatch warn")


def test_fingerprint_mismatch_with_warn_is_a_warning():
    w = check_bases({"rl": ev(base="/ck/sft", base_fingerprint="bbbb")}, {"rl": BASE}, mismatch="warn")
    assert len(w) == 1 and "trained from base /ck/sft (fingerprint bbbb) but is compared against /ck/base" in w[0]


def test_fingerprint_decides_over_the_path():
    """Same path, other bytes (the folder was overwritten after training): a mismatch."""
    with pytest.raises(EvaluationError, match="fingerprint bbbb"):
        check_bases({"rl": ev(base="/ck/base", base_fingerprint="bbbb")}, {"rl": BASE})


def test_no_fingerprint_path_match_warns(tmp_path):
    (tmp_path / "base").mkdir()
    w = check_bases({"rl": ev(base=str(tmp_path / "base" / "."))}, {"rl": {"path": str(tmp_path / "base"),
                                                                            "fingerprint": "aaaa"}})
    assert len(w) == 1 and "no base_fingerprint; run rl's evaluation base was matched on its path" in w[0]


def test_no_fingerprint_path_mismatch_is_an_error_or_warning(tmp_path):
    e = {"rl": ev(base=str(tmp_path / "base"))}
    with pytest.raises(EvaluationError, match=r"\(no base_fingerprint: compared by path\) but is compared against "
                                              r"/ck/sft"):
        check_bases(e, {"rl": SFT})
    assert "compared by path" in check_bases(e, {"rl": SFT}, mismatch="warn")[0]


def test_no_identity_warns_that_the_eval_is_old():
    w = check_bases({"rl": ev()}, {"rl": BASE})
    assert w == ["runs/rl/eval.json: an old eval.json carries no identity of its base (no base, no base_fingerprint); "
                 "not checked that run rl is compared against the base it was trained from"]


def test_load_eval_reads_the_fingerprint(tmp_path):
    p = tmp_path / "eval.json"
    p.write_text(json.dumps({**ACC, "base": "/ck/sft", "base_fingerprint": "bbbb"}))
    e = load_eval(p)
    assert (e.base, e.base_fingerprint) == ("/ck/sft", "bbbb") and "base_fingerprint" not in e.extra
    assert e.as_dict()["base_fingerprint"] == "bbbb"
    p.write_text(json.dumps({**ACC, "base_fingerprint": 7}))
    with pytest.raises(Exception, match="'base_fingerprint' = 7; expected a string"):
        load_eval(p)


# ---- through the report command --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    """base, sft = base + D, rl = sft + D' (tiny, float32) and the fingerprints of base and sft."""
    d = tmp_path_factory.mktemp("evalbase")
    base = ckpt.llama_state(layers=1, dtype=torch.float32)
    sft = {k: v + 0.01 for k, v in base.items()}
    rl = {k: v + 0.001 for k, v in sft.items()}
    p = {k: ckpt.save(sd, d / k) for k, sd in (("base", base), ("sft", sft), ("rl", rl))}
    fp = {k: open_checkpoint(p[k]).identity()["fingerprint"] for k in ("base", "sft")}
    assert fp["base"] != fp["sft"]
    return p, fp


def _eval(tmp_path, **ident):
    f = tmp_path / "eval.json"
    f.write_text(json.dumps({"method": "grpo", **ACC, **ident}))
    return f


def _report(monkeypatch, capsys, tmp_path, ck, f, *extra):
    p, _ = ck
    return run_main(monkeypatch, capsys, "report", p["base"], f"sft={p['sft']}", f"rl={p['rl']}", "--eval",
                    f"rl={f}", "--out", tmp_path / "rep", "--spectral", "off", "--no-figures", "--no-progress", *extra)


def test_cli_rl_from_sft_without_run_base_is_refused(ck, monkeypatch, capsys, tmp_path):
    p, fp = ck
    f = _eval(tmp_path, base=str(p["sft"]), base_fingerprint=fp["sft"])
    code, out, err = _report(monkeypatch, capsys, tmp_path, ck, f)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"updelta: {f}: run rl was trained from base {p['sft']} (fingerprint {fp['sft']}) but is "
                          f"compared against {p['base']} (fingerprint {fp['base']})")
    assert f"--run-base rl={p['sft']}" in err and "--eval-base-mismatch warn" in err
    assert not (tmp_path / "rep").exists()  # checked before the pass; nothing written


def test_cli_rl_from_sft_with_its_run_base_passes(ck, monkeypatch, capsys, tmp_path):
    p, fp = ck
    f = _eval(tmp_path, base=str(p["sft"]), base_fingerprint=fp["sft"])
    code, out, err = _report(monkeypatch, capsys, tmp_path, ck, f, "--run-base", "rl=sft")
    assert code == 0, err
    assert "warning" not in err
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "**rl**: measured from its own base" in md


def test_cli_mismatch_with_warn_writes_the_report_with_the_warning(ck, monkeypatch, capsys, tmp_path):
    p, fp = ck
    f = _eval(tmp_path, base=str(p["sft"]), base_fingerprint=fp["sft"])
    code, out, err = _report(monkeypatch, capsys, tmp_path, ck, f, "--eval-base-mismatch", "warn")
    assert code == 0, err
    line = [x for x in err.splitlines() if x.startswith("updelta: warning:")]
    assert len(line) == 1 and "run rl was trained from base" in line[0]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert f"Warning: {f}: run rl was trained from base {p['sft']} (fingerprint {fp['sft']})" in md


def test_cli_old_eval_warns_and_bad_mode_is_refused(ck, monkeypatch, capsys, tmp_path):
    f = _eval(tmp_path)
    code, _, err = _report(monkeypatch, capsys, tmp_path, ck, f)
    assert code == 0 and "an old eval.json carries no identity of its base" in err
    code, _, err = _report(monkeypatch, capsys, tmp_path, ck, f, "--eval-base-mismatch", "ignore")
    assert code == 2 and err == "updelta: --eval-base-mismatch 'ignore': choose one of error, warn\n"


def test_saved_result_is_checked_against_its_recorded_bases(ck, monkeypatch, capsys, tmp_path):
    """report --from: the bases recorded in the saved compare decide."""
    import updelta

    p, fp = ck
    saved = updelta.compare(p["base"], {"sft": p["sft"], "rl": p["rl"]}, run_bases={"rl": "sft"}, spectral="off",
                            progress=False).save(tmp_path / "cmp")
    good = _eval(tmp_path, base=str(p["sft"]), base_fingerprint=fp["sft"])
    code, _, err = run_main(monkeypatch, capsys, "report", "--from", saved, "--eval", f"rl={good}", "--out",
                            tmp_path / "rep", "--no-figures")
    assert code == 0, err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**ACC, "base": str(p["base"]), "base_fingerprint": fp["base"]}))
    code, _, err = run_main(monkeypatch, capsys, "report", "--from", saved, "--eval", f"rl={bad}", "--out",
                            tmp_path / "rep2", "--no-figures")
    assert code == 2 and f"compared against {p['sft']}" in err and not (tmp_path / "rep2").exists()
