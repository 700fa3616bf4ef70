"""The framework-neutral Tracker: start from a checkpoint, sparsity in the save dtype, LoRA adapters, filters."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from integ_models import tiny_llama

import updelta
from updelta.errors import UpdeltaError
from updelta.integrations.tracker import TrackOptions, Tracker


def _nudge(model, seed=3, scale=1e-3, frac=0.5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale * (torch.rand(p.shape, generator=g) < frac))


def test_base_checkpoint_instead_of_a_copy(tmp_path):
    model = tiny_llama()
    model.save_pretrained(tmp_path / "start")
    copied = Tracker(model, TrackOptions(every_n_steps=1))
    copied.begin()
    from_file = Tracker(model, TrackOptions(every_n_steps=1), base=tmp_path / "start")
    from_file.begin()
    assert from_file.start == {} and len(copied.start) == len(list(model.parameters()))
    _nudge(model)
    a, b = copied.measure(1), from_file.measure(1)
    assert a.logs == b.logs and a.logs["updelta/rel_delta"] > 0

    from safetensors.torch import save_file

    (tmp_path / "partial").mkdir()
    sd = {k: v.contiguous() for k, v in model.state_dict().items() if k != "model.norm.weight"}
    save_file(sd, str(tmp_path / "partial" / "model.safetensors"))
    with pytest.raises(UpdeltaError, match="no tensor model.norm.weight"):
        Tracker(model, base=tmp_path / "partial").begin()


def test_sparsity_in_the_save_dtype_counts_like_bf16_checkpoints(tmp_path):
    model = tiny_llama().to(torch.bfloat16).float()  # float32 master weights with bf16 values, as updelta train
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(tmp_path / "start")
    t = Tracker(model, TrackOptions(every_n_steps=1, save_dtype="bfloat16"), out=tmp_path / "traj")
    t.begin()
    assert {w.dtype for w in t.start.values()} == {torch.bfloat16}  # the copy is kept in the save dtype
    _nudge(model, scale=3e-3)
    m = t.measure(1)
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(tmp_path / "step1")
    r = updelta.diff(tmp_path / "start", tmp_path / "step1", spectral="off", progress=False)
    got = m.result.tensors.set_index("name")
    ref = r.tensors.set_index("name")
    for c in ("n_eq", "n_le_atol", "n_le_rtol", "n_compared"):
        assert (got.loc[ref.index, c] == ref[c]).all(), c
    assert m.result.summary["n_eq"].iloc[0] > 0  # bf16 rounding leaves elements unchanged: counted
    assert math.isclose(m.logs["updelta/rel_delta"], r.summary["rel_delta"].iloc[0], rel_tol=1e-6)
    assert m.result.meta["tracking"]["sparsity_dtype"] == "bfloat16"


def test_lora_update_is_the_merged_adapter(tmp_path):
    from peft import LoraConfig, get_peft_model

    base = tiny_llama()
    base.save_pretrained(tmp_path / "start")
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            lora_dropout=0.0))
    t = Tracker(model, TrackOptions(every_n_steps=1))
    t.begin()
    assert t.start == {}  # the factors are not rows; the base weights are frozen: no copy
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 1e-2)
    m = t.measure(1)
    merged = model.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    r = updelta.diff(tmp_path / "start", tmp_path / "merged", spectral="off", progress=False)
    got = m.result.tensors.set_index("name")
    ref = r.tensors.set_index("name")
    assert sorted(got.index) == sorted(ref.index)  # rows named after the base weights
    assert (got.loc[ref.index, "n_eq"] == ref["n_eq"]).all()
    changed = got[got["delta_fro"] > 0].index
    assert sorted({n.rsplit(".", 2)[-2] for n in changed}) == ["q_proj", "v_proj"]
    for k in ("rel_delta", "delta_fro", "sparsity_exact", "cos_delta_base"):
        assert math.isclose(m.logs[f"updelta/{k}"], r.summary[k].iloc[0], rel_tol=1e-6), k


def test_include_selects_parameters():
    model = tiny_llama()
    t = Tracker(model, TrackOptions(every_n_steps=1, include=("self_attn",)))
    t.begin()
    _nudge(model)
    logs = t.measure(1).logs
    comps = {k.split("/")[1] for k in logs if k.count("/") == 2}
    assert comps == {"attn"}
    with pytest.raises(UpdeltaError, match="no parameter to measure"):
        Tracker(model, TrackOptions(include=("nothing-matches",))).begin()


def test_sharded_tracking_refuses_spectral_and_base(tmp_path):
    with pytest.raises(UpdeltaError, match="spectral figures need whole matrices"):
        Tracker(tiny_llama(), TrackOptions(spectral="fast"), shards="DeepSpeed ZeRO-3")
    with pytest.raises(UpdeltaError, match="sharded"):
        t = Tracker(tiny_llama(), base=tmp_path, shards="FSDP")
        t.begin()
