"""Mixture-of-experts checkpoints: one row per expert, stacked tensors split into the same rows as per-expert
ones, the router component, `Result.experts`, and the bad input of a stacked tensor whose expert count differs.
Tiny real models from `transformers` (tests/moe.py), built once per session."""
from __future__ import annotations

import math
import shutil

import pandas as pd
import pytest
import torch

import moe
import updelta
from updelta.families import naming
from updelta.errors import PairingError
from updelta.families.experts import ExpertSlice, split
from updelta.io import open_checkpoint
from updelta.io.readers import open_reader

pytest.importorskip("transformers")
CASES = list(moe.CASES)
ROUTER = {"mixtral": {"router"}, "qwen2_moe": {"router", "shared_expert_gate"}, "qwen3_moe": {"router"},
          "deepseek_v2": {"router"}, "deepseek_v3": {"router"}}
ROUTER_PARAMS = {"deepseek_v3": {"weight", "e_score_correction_bias"}}
SHARED = {"qwen2_moe": "shared_expert.", "deepseek_v2": "shared_experts.", "deepseek_v3": "shared_experts."}
FAMILY = {"mixtral": "mixtral", "qwen2_moe": "qwen2_moe", "qwen3_moe": "qwen2_moe", "deepseek_v2": "deepseek",
          "deepseek_v3": "deepseek"}
ID = ["name", "layer", "expert", "component", "module", "param", "shape", "numel"]
NUM = ["delta_fro", "base_fro", "rel_delta", "delta_max", "cos_delta_base", "sparsity_exact", "ss_delta", "n_eq"]


@pytest.fixture(scope="module", params=CASES)
def built(request, tmp_path_factory):
    return moe.build(request.param, tmp_path_factory)


def _diff(base, ft, **kw):
    return updelta.diff(base, ft, name="ft", spectral=kw.pop("spectral", "off"), **kw)


def test_planted_expert_known_answer(built):
    r = _diff(built.per_expert, built.planted)
    t = r.tensors
    assert r.meta["pairing"]["family"] == FAMILY[built.family]
    ref_fro = float((built.w1.double() - built.w0.double()).norm())  # float64 reference
    row = t[t["name"] == built.target].iloc[0]
    assert (row["layer"], row["expert"], row["component"]) == (built.layer, 1, "mlp")
    # the fused kernel adds float32 lanes in chunks of 256 before float64 totals: 1e-6 relative
    assert row["delta_fro"] == pytest.approx(ref_fro, rel=1e-6)
    assert row["rel_delta"] == pytest.approx(ref_fro / float(built.w0.double().norm()), rel=1e-6)
    assert row["delta_fro"] > 0.05
    others = t[t["name"] != built.target]
    assert (others["delta_fro"] == 0).all() and (others["sparsity_exact"] == 1).all()
    # expert column: 0..E-1 on routed experts of every MoE layer, null for everything else
    routed = t[t["expert"].notna()]
    assert sorted(routed["expert"].unique()) == list(range(moe.E))
    assert (routed["component"] == "mlp").all() and routed["module"].str.startswith("experts.").all()
    assert all(len(s) == 2 for s in routed["shape"])
    per_layer = routed.groupby(["layer", "expert"]).size()
    assert (per_layer == 3).all()  # gate, up, down of each expert
    if built.family in SHARED:
        shared = t[t["module"].str.startswith(SHARED[built.family])]
        assert len(shared) and shared["expert"].isna().all() and (shared["component"] == "mlp").all()
    # routing tensors: component router
    router = t[t["component"] == "router"]
    assert set(router["module"]) == ROUTER[built.family]
    assert set(router["param"]) == ROUTER_PARAMS.get(built.family, {"weight"})
    assert router["expert"].isna().all() and router["layer"].notna().all()
    assert not t["component"].eq("other").any()
    if built.family.startswith("deepseek"):  # first_k_dense_replace: layer 0 keeps a dense MLP
        dense = t[t["layer"] == 0]
        assert set(dense[dense["component"] == "mlp"]["module"]) == {"gate_proj", "up_proj", "down_proj"}
        assert set(dense[dense["component"] == "attn"]["module"]) == {"q_a_proj", "q_b_proj", "kv_a_proj_with_mqa",
                                                                      "kv_b_proj", "o_proj"}
        assert {"q_a_layernorm", "kv_a_layernorm"} <= set(dense[dense["component"] == "norm"]["module"])
    # Result.experts: one row per (run, layer, expert), figures from the summed sums of its three projections
    ex = r.experts
    n_moe_layers = routed["layer"].nunique()
    assert len(ex) == n_moe_layers * moe.E and ex["n_tensors"].eq(3).all()
    hit = ex[(ex["layer"] == built.layer) & (ex["expert"] == 1)].iloc[0]
    mine = routed[(routed["layer"] == built.layer) & (routed["expert"] == 1)]
    assert hit["delta_fro"] == pytest.approx(ref_fro, rel=1e-6)
    assert hit["delta_fro"] == math.sqrt(mine["ss_delta"].sum())
    assert hit["rel_delta"] == pytest.approx(math.sqrt(mine["ss_delta"].sum() / mine["ss_base"].sum()), rel=1e-14)
    assert hit["numel"] == mine["numel"].sum()
    assert (ex.drop(index=hit.name)["delta_fro"] == 0).all()


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    a = a.sort_values("name").reset_index(drop=True)
    b = b.sort_values("name").reset_index(drop=True)
    assert list(a["name"]) == list(b["name"])
    pd.testing.assert_frame_equal(a[ID[1:]].astype(str), b[ID[1:]].astype(str))
    for c in NUM:
        assert a[c].equals(b[c]), c


@pytest.mark.parametrize("case", ["mixtral", "qwen3_moe", "deepseek_v3"])
def test_stacked_and_per_expert_layouts_give_the_same_rows(case, tmp_path_factory):
    b = moe.build(case, tmp_path_factory)
    ref = _diff(b.per_expert, b.planted, spectral="fast")
    for base, ft in ((b.stacked, b.planted), (b.per_expert, b.planted_stacked), (b.stacked, b.planted_stacked)):
        got = _diff(base, ft, spectral="fast")
        _same(ref.tensors, got.tensors)
        for c in ("stable_rank", "energy_rank_90", "topk_energy"):
            g, w = (x.tensors.set_index("name")[c].sort_index() for x in (got, ref))
            assert g.equals(w) and g.notna().any(), c
        timing = [c for c in ref.experts.columns if c.startswith("spectral_s")]
        pd.testing.assert_frame_equal(ref.experts.drop(columns=timing), got.experts.drop(columns=timing))
    # the notes say which stored tensors were split
    split_notes = _diff(b.stacked, b.planted).meta["pairing"]["split_experts"]
    assert {s["name"].rsplit(".", 1)[1] for s in split_notes} == {"gate_up_proj", "down_proj"}
    assert all(s["experts"] == moe.E and s["side"] == "base" for s in split_notes)


def test_slices_read_the_stored_tensor_views(tmp_path_factory, tmp_path):
    """A slice's location reads exactly expert e's gate (or up) rows of [E, 2I, H], from safetensors and .pt."""
    b = moe.build("qwen3_moe", tmp_path_factory)
    from safetensors.torch import load_file
    sd = load_file(b.stacked / "model.safetensors")
    pt = tmp_path / "stacked.pt"
    torch.save(sd, pt)
    fam = naming.family("qwen2_moe")
    for path in (b.stacked, pt):
        ck = open_checkpoint(path)
        name = "model.layers.1.mlp.experts.gate_up_proj"
        slices, s = split(ck.tensors[name], fam)
        assert s.experts == moe.E and len(slices) == 2 * moe.E
        full = sd[name]
        inter = full.shape[1] // 2
        for e in (0, 3):
            for j, proj in enumerate(("gate_proj", "up_proj")):
                sl = slices[f"model.layers.1.mlp.experts.{e}.{proj}.weight"]
                assert isinstance(sl, ExpertSlice) and sl.shape == (inter, full.shape[2])
                loc = sl.location
                got = torch.from_numpy(open_reader(loc).read(0, loc.numel).copy()).reshape(sl.shape)
                assert torch.equal(got, full[e, j * inter:(j + 1) * inter])
                assert torch.equal(torch.from_numpy(sl.read(3, 5).copy()),
                                   full[e, j * inter:(j + 1) * inter].reshape(-1)[3:8])
        ck.close()
    r = _diff(pt, b.planted_stacked)  # a .pt state dict (no config.json next to it): names alone
    assert r.tensors["delta_fro"].gt(0).sum() == 1


def test_stacked_expert_count_mismatch_is_one_line(tmp_path_factory, tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file, save_file
    from clirun import run_main

    b = moe.build("qwen3_moe", tmp_path_factory)
    sd = load_file(b.stacked / "model.safetensors")
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    shutil.copy(b.stacked / "config.json", fewer / "config.json")
    save_file({n: (t[:3].contiguous() if "mlp.experts." in n else t) for n, t in sd.items()},
              fewer / "model.safetensors")
    for base, ft, needle in ((b.stacked, fewer, "holds 4 experts"), (fewer, b.per_expert, "holds 3 experts"),
                             (b.per_expert, fewer, "has 4")):
        with pytest.raises(PairingError) as e:
            _diff(base, ft)
        assert "\n" not in str(e.value) and needle in str(e.value) and "experts" in str(e.value)
        out = tmp_path / "o.parquet"
        code, _, err = run_main(monkeypatch, capsys, "diff", base, ft, "--spectral", "off", "--out", out)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert not out.exists()


def test_router_component_in_every_list():
    from updelta.report import gates
    from updelta.metrics import schema
    from updelta.plot import common as _common

    assert "router" in naming.components() and "router" in schema.components()
    assert "router" in gates.COMPONENTS and "router" in _common.COMPONENT_ORDER
    assert naming.components().index("router") < naming.components().index("mlp")


def test_result_experts_saved_and_loaded(tmp_path_factory, tmp_path):
    b = moe.build("mixtral", tmp_path_factory)
    r = _diff(b.per_expert, b.planted)
    r.save(tmp_path / "r.parquet")
    back = updelta.load(tmp_path / "r.parquet")
    pd.testing.assert_frame_equal(back.experts, r.experts)
    assert str(back.tensors["expert"].dtype) == "Int64"
    dense = updelta.diff(b.per_expert, b.planted, name="ft", spectral="off", include=[r"self_attn"])
    assert dense.experts.empty and list(dense.experts.columns) == ["run", "layer", "expert"]


def test_other_stacked_layout_splits_along_experts_only(tmp_path):
    """[E, H, 2I] gate/up (interleaved columns) with [E, I, H] down: the shapes disagree with the family's
    [E, 2I, H] / [E, H, I] layout, so each expert is one row holding its whole matrix, never a wrong half."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(3)
    n_exp, hid, inter = 3, 8, 6
    sd = {"model.layers.0.self_attn.q_proj.weight": torch.randn(hid, hid, generator=g),
          "model.layers.0.mlp.experts.gate_up_proj": torch.randn(n_exp, hid, 2 * inter, generator=g),
          "model.layers.0.mlp.experts.down_proj": torch.randn(n_exp, inter, hid, generator=g)}
    ft = dict(sd)
    ft["model.layers.0.mlp.experts.gate_up_proj"] = sd["model.layers.0.mlp.experts.gate_up_proj"].clone()
    ft["model.layers.0.mlp.experts.gate_up_proj"][2] += 0.5
    save_file(sd, tmp_path / "b.safetensors")
    save_file(ft, tmp_path / "f.safetensors")
    t = _diff(tmp_path / "b.safetensors", tmp_path / "f.safetensors").tensors
    rows = t[t["expert"].notna()].set_index("name")
    assert len(rows) == 2 * n_exp
    gu = rows.loc["model.layers.0.mlp.experts.2.gate_up_proj"]
    assert list(gu["shape"]) == [hid, 2 * inter] and gu["module"] == "experts.gate_up_proj"
    assert gu["delta_fro"] == pytest.approx(0.5 * math.sqrt(hid * 2 * inter), rel=1e-6)
    assert rows.drop(index=gu.name)["delta_fro"].eq(0).all()
