"""`updelta demo --quick` end to end (the pipeline, never the outcome): runs, report, table, reuse on re-run."""
import json
import sys

import pytest

from updelta.cli import main
from updelta.demo.zoo import ZOO


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _run(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["updelta", "demo", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr()


def test_demo_quick_pipeline_and_reuse(tmp_path, monkeypatch, capsys):
    """The quick zoo plus the full real-base demo's GRPO-from-SFT run (on the toy base here): that run is trained
    from its seed's SFT folder and measured from it (a per-run base: its rows in every table, no cross-run pair
    with the runs of the common base, the from-SFT claim computed)."""
    import pandas as pd

    from updelta.demo import zoo as demo

    monkeypatch.setattr(demo, "zoo_of", lambda real, quick: ZOO + (demo.FROM_SFT,))
    out = tmp_path / "demo"
    code, cap = _run(monkeypatch, capsys, "--quick", "--seeds", "1", "--out", out)
    assert code == 0, cap.err
    names = [f"{m}-{t}-s0" for m, t in ZOO]
    sft, grposft = out / "runs" / "sft-target-s0", out / "runs" / "grposft-target-s0"
    ev = json.loads((grposft / "eval.json").read_text())
    assert ev["method"] == "grpo" and ev["start"] == "sft" and ev["base"] == str(sft.resolve())
    summary = pd.read_parquet(out / "tables" / "summary.parquet").set_index("run")
    assert summary.loc["grposft-target-s0", "base"] == str(sft)
    assert (summary.drop(index="grposft-target-s0")["base"] != str(sft)).all()
    pairs = pd.read_parquet(out / "tables" / "pairs_summary.parquet")
    other = pairs[(pairs["run_a"] == "grposft-target-s0") | (pairs["run_b"] == "grposft-target-s0")]
    assert len(other) == len(names) and (other["n_tensors"] == 0).all() and other["delta_cos"].isna().all()
    assert (pairs.drop(index=other.index)["n_tensors"] > 0).all()
    assert "grposft-target-s0" in cap.out and "grposft-target-s0" in (out / "report.md").read_text()
    assert "RL started from an SFT checkpoint" in cap.out
    for n in names:
        ev = json.loads((out / "runs" / n / "eval.json").read_text())
        assert set(ev["before"]) == set(ev["after"]) == {"target_id", "target_ood", "knowledge", "retention"}
        assert ev["seed"] == 0 and ev["save_dtype"] == "bfloat16" and "weight_decay" in ev
        assert ev["preset"] == "toy" and ev["start"] == "base" and ev["no_update"] is False and "budget" in ev
        assert n in cap.out  # one row per run in the terminal table
    for f in ["report.md", "report.html", "summary.json", "tables/tensors.parquet", "tables/pairs.parquet"]:
        assert (out / f).exists(), f
    summary = json.loads((out / "summary.json").read_text())  # the report's, beside the tables' summary
    assert set(summary["runs"]) == set(names) | {"grposft-target-s0"}
    assert all(summary["runs"][n]["evaluation"]["method"] == n.split("-")[0] for n in names)
    claims = [f for f in summary["findings"] if f["topic"] == "claim"]
    assert len(claims) >= 5
    assert all(f["text"].split(":")[0] in ("reproduced", "direction only", "not reproduced", "inconclusive")
               for f in claims)
    records = summary["claims"]  # the claim records (docs/claims.md)
    assert len(records) == len(claims) and all(r["threshold"] and r["settings"] is not None for r in records)
    assert {r["kind"] for r in records} == {"published", "prediction"}
    assert any(r["claim"].startswith("SFT's logit-lens directions") for r in records)
    razor = next(r for r in records if r["claim"].startswith("Forgetting is predicted"))
    kn = next(x for x in razor["measured"]["runs"] if x["run"] == "sft-knowledge-s0")
    ev = json.loads((out / "runs" / "sft-knowledge-s0" / "eval.json").read_text())
    assert ev["forgetting"]["split"] == "knowledge" and kn["kl_own_task"] == ev["forgetting"]["kl_per_token"]
    groups = summary["zoo"]["groups"]
    assert [(g["method"], g["task"]) for g in groups] == list(ZOO) + [demo.FROM_SFT]
    assert "figures/retention_vs_gain.png" in summary["figures"] and (out / "figures" / "retention_vs_gain.png").exists()
    md = (out / "report.md").read_text()
    assert "## Claims from the literature" in md and "retention lost / gain" in md and "retention_vs_gain.png" in md
    assert "Claims from the literature" in (out / "report.html").read_text()
    assert md.index("## Claims from the literature") < md.index("retention lost / gain")  # claims come first
    assert "Findings" in (out / "report.md").read_text()
    for header in ["target gain", "OOD gain", "retention change", "rel update", "sparse exact", "sparse atol",
                   "sparse rtol", "median erank", "flags", "own-task gain", "gain / rel update"]:
        assert header in cap.out
    assert "report:" in cap.out and "1/4 base" in cap.err and "4/4 report" in cap.err
    # Re-running reuses every finished run and rewrites the report in place.
    mtimes = {n: (out / "runs" / n / "eval.json").stat().st_mtime_ns for n in names}
    code, cap = _run(monkeypatch, capsys, "--quick", "--seeds", "1", "--out", out)
    assert code == 0 and cap.err.count("reusing the finished run") == len(names) + 1
    assert all((out / "runs" / n / "eval.json").stat().st_mtime_ns == mtimes[n] for n in names)
    assert (out / "report.md").exists()


def test_seeds_in_worker_processes_train_the_same_runs(tmp_path, monkeypatch, capfd):
    """Two seeds in two spawned processes (one torch thread each) write bit for bit the checkpoints and
    evaluations that one process writes training them one after the other at one thread."""
    import torch

    from updelta.demo import zoo as demo
    from updelta.train import default_base_path

    monkeypatch.setattr(demo, "zoo_of", lambda real, quick: (("sft", "target"),))
    monkeypatch.setattr(demo, "_cores", lambda: 2)
    base = default_base_path()
    assert torch.get_num_threads() == 1  # one_torch_thread
    one = demo.train_zoo(tmp_path / "one", base, quick=True, seeds=2, force=False, workers=1)
    two = demo.train_zoo(tmp_path / "two", base, quick=True, seeds=2, force=False, workers=2)
    err = capfd.readouterr().err
    assert "in 2 processes (1 torch thread each)" in err and err.count(": done in ") == 2
    assert list(one) == list(two) == ["sft-target-s0", "sft-target-s1"]
    for name in one:
        a, b = (json.loads((d[name] / "eval.json").read_text()) for d in (one, two))
        assert a["after"] == b["after"] and a["torch_threads"] == b["torch_threads"] == 1
        assert (one[name] / "model.safetensors").read_bytes() == (two[name] / "model.safetensors").read_bytes()
    w0 = (one["sft-target-s0"] / "model.safetensors").read_bytes()
    assert w0 != (one["sft-target-s1"] / "model.safetensors").read_bytes()  # the seeds differ



def test_bad_counts_fail_before_anything_is_written(tmp_path, monkeypatch, capsys):
    for flag in ("--seeds", "--workers"):
        code, cap = _run(monkeypatch, capsys, flag, "0", "--out", tmp_path / "d")
        assert code == 2 and f"{flag} must be at least 1, got 0" in cap.err and "Traceback" not in cap.err
        assert not (tmp_path / "d").exists()
