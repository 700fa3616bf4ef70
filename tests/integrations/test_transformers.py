"""The transformers callback against the offline tools: log_history at step N == `updelta diff` of checkpoint-N."""
from __future__ import annotations

import math

import pytest
from clirun import run_main
from integ_models import STEPS

import updelta
from updelta.errors import UpdeltaError
from updelta.integrations.tracker import LOG_METRICS
from updelta.tables.trajectory import UPDATE_COLS, load_table

COUNTS = ["n_compared", "n_eq", "n_le_atol", "n_le_rtol", "nonfinite_base", "nonfinite_ft", "numel"]


def _entry(history, step):
    hits = [h for h in history if h.get("step") == step and "updelta/rel_delta" in h]
    assert len(hits) == 1, f"expected one updelta entry at step {step}, got {len(hits)}"
    return hits[0]


def _close(a, b, rel=1e-6):
    assert math.isclose(a, b, rel_tol=rel, abs_tol=1e-12), (a, b)


@pytest.fixture(scope="module")
def diffs(tracked_run):
    return {s: updelta.diff(tracked_run.start, tracked_run.out / f"checkpoint-{s}", spectral="fast", progress=False)
            for s in STEPS}


@pytest.mark.parametrize("step", STEPS)
def test_logged_values_equal_diff_of_the_checkpoint(tracked_run, diffs, step):
    e, r = _entry(tracked_run.log_history, step), diffs[step]
    expected = {f"updelta/{m}": r.summary.iloc[0][m] for m in LOG_METRICS}
    for _, row in r.components.iterrows():
        for m in LOG_METRICS:
            expected[f"updelta/{row['component']}/{m}"] = row[m]
        if not math.isnan(row["stable_rank"]):
            expected[f"updelta/{row['component']}/stable_rank"] = row["stable_rank"]
    expected = {k: float(v) for k, v in expected.items() if not math.isnan(float(v))}
    got = {k: v for k, v in e.items() if k.startswith("updelta/")}
    assert set(got) == set(expected)
    assert {"updelta/attn/stable_rank", "updelta/mlp/rel_delta", "updelta/embed/rel_delta"} <= set(got)
    for k, v in expected.items():
        _close(got[k], v)
    assert got["updelta/rel_delta"] > 0.01  # the run moved the weights
    # the trainer's own logging of the step is kept (Trainer.log clears should_log)
    assert any(h.get("step") == step and "loss" in h for h in tracked_run.log_history)


def test_out_table_counts_exactly(tracked_run, diffs):
    t = load_table(tracked_run.traj)
    assert t.model()["step"].tolist() == list(STEPS)
    assert t.table[UPDATE_COLS].isna().all().all()  # no previous weights are kept
    for s in STEPS:
        rows = t.table[(t.table["level"] == "tensor") & (t.table["step"] == s)].set_index("name")
        ref = diffs[s].tensors.set_index("name")
        assert sorted(rows.index) == sorted(ref.index)
        for c in COUNTS:
            assert (rows.loc[ref.index, c].astype("int64") == ref[c].astype("int64")).all(), c
        for c in ("delta_fro", "base_fro", "cos_delta_base", "delta_max", "stable_rank"):
            for n in ref.index:
                a, b = float(rows.loc[n, c]), float(ref.loc[n, c])
                assert (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12), (n, c)
    embed = t.table[(t.table["level"] == "tensor") & (t.table["name"] == "model.embed_tokens.weight")]
    assert (embed["delta_fro"] == 0).all() and (embed["sparsity_exact"] == 1).all()  # frozen: measured once


def test_measurements_kept_on_the_callback(tracked_run):
    assert [m.step for m in tracked_run.callback.measurements] == list(STEPS)
    res = tracked_run.callback.measurements[-1].result
    assert res.meta["tracking"]["frozen_tensors"] == 1
    assert res.runs == [f"step-{STEPS[-1]}"]


def test_plot_and_report_read_the_trajectory_table(tracked_run, tmp_path, monkeypatch, capsys):
    fig = tmp_path / "profile.png"
    code, out, err = run_main(monkeypatch, capsys, "plot", tracked_run.traj, "--kind", "layer_profile",
                              "--out", fig)
    assert code == 0, err
    assert fig.stat().st_size > 1000
    code, out, err = run_main(monkeypatch, capsys, "report", "--from", tracked_run.traj / "trajectory.parquet",
                              "--out", tmp_path / "rep", "--no-figures", "--gate", "rel_delta<=10")
    assert code == 0, err
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "step-2" in md and "step-4" in md


def test_sharded_parameters_refuse_spectral(tracked_run):
    from transformers import Trainer, TrainingArguments

    from integ_models import tiny_llama
    from updelta.integrations.transformers import sharding_of, track

    args = TrainingArguments(output_dir=str(tracked_run.out.parent / "unused"), report_to=[], use_cpu=True)
    trainer = Trainer(model=tiny_llama(), args=args)
    assert sharding_of(trainer) is None
    trainer.is_fsdp_enabled = True  # what Trainer sets under an FSDP plugin
    assert sharding_of(trainer) == "FSDP"
    with pytest.raises(UpdeltaError, match="sharded \\(FSDP\\).*spectral='off'"):
        track(trainer, spectral="fast")
    cb = track(trainer, spectral="off")
    assert cb.sharding == "FSDP" and cb in trainer.callback_handler.callbacks


def test_bad_options_fail_before_training(tracked_run):
    from updelta.integrations.transformers import track

    with pytest.raises(UpdeltaError, match="--every-n-steps"):
        track(tracked_run.callback.trainer, every_n_steps=0)
    with pytest.raises(UpdeltaError, match="--spectral 'full'"):
        track(tracked_run.callback.trainer, spectral="full")
