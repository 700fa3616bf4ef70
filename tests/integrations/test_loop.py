"""`updelta train ... --track-every N`: the embedded trainer's run writer measures like `updelta diff`."""
from __future__ import annotations

import json
import math

import torch

import updelta
from updelta.train.model import default_base_path, load_model
from updelta.train.runs import RunWriter
from updelta.tables.trajectory import load_table


def test_run_writer_tracks_like_diff_of_its_checkpoints(tmp_path):
    base = default_base_path()
    model, tok = load_model(base)  # float32 master weights; checkpoints saved in bfloat16
    writer = RunWriter(tmp_path, model, tok, save_dtype="bfloat16", save_every=2, total_steps=3, desc="t",
                       log_every=100, track_every=2)
    g = torch.Generator().manual_seed(0)
    for step in (1, 2, 3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 2e-3)
        writer.step(step, {"step": step, "loss": 1.0})
    writer.bar.close()
    tracked = [r for r in writer.records if "updelta/rel_delta" in r]
    assert [r["step"] for r in tracked] == [2, 3]  # every 2 steps, and the last one
    r = updelta.diff(base, tmp_path / "checkpoint-2", spectral="off", progress=False)
    for k in ("rel_delta", "sparsity_exact", "sparsity_atol", "cos_delta_base"):
        assert math.isclose(tracked[0][f"updelta/{k}"], r.summary[k].iloc[0], rel_tol=1e-6), k
    t = load_table(tmp_path)
    rows = t.table[(t.table["level"] == "tensor") & (t.table["step"] == 2)].set_index("name")
    ref = r.tensors.set_index("name")
    assert (rows.loc[ref.index, "n_eq"].astype("int64") == ref["n_eq"]).all()  # counted in bf16, as saved
    assert json.loads(json.dumps(tracked[0]))  # JSON-ready for train_log.jsonl


def test_track_every_is_an_option():
    from updelta.train.options import OptionsError, RunOptions

    assert RunOptions(out="x").track_every == 0
    try:
        RunOptions(out="x", track_every=-1)
    except OptionsError as e:
        assert "--track-every" in str(e)
    else:
        raise AssertionError("negative --track-every accepted")
