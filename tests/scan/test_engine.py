"""Engine: layouts and dtypes give the same numbers, aggregates are computed from sums, results round-trip."""
import json
import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

import updelta

import ckpt

CHEAP = ["delta_fro", "base_fro", "rel_delta", "delta_max", "delta_mean_abs", "cos_delta_base",
         "sparsity_exact", "sparsity_atol", "sparsity_rtol"]


def _same(a: pd.DataFrame, b: pd.DataFrame):
    a, b = a.sort_values("name").reset_index(drop=True), b.sort_values("name").reset_index(drop=True)
    assert list(a["name"]) == list(b["name"])
    for c in CHEAP:
        np.testing.assert_allclose(a[c].to_numpy(float), b[c].to_numpy(float), rtol=1e-6, err_msg=c)


def test_sharded_single_and_bin_agree(tmp_path):
    base = ckpt.llama_state()
    ft = ckpt.perturb(base)
    ref = updelta.diff(ckpt.save(base, tmp_path / "b1"), ckpt.save(ft, tmp_path / "f1"), spectral="off").tensors
    sh = updelta.diff(ckpt.save(base, tmp_path / "b2", shards=3), ckpt.save(ft, tmp_path / "f2", shards=2),
                      spectral="off").tensors
    bn = updelta.diff(ckpt.save(base, tmp_path / "b3.bin"), ckpt.save(ft, tmp_path / "f3", fmt="bin"),
                      spectral="off").tensors
    _same(ref, sh)
    _same(ref, bn)


def test_mixed_dtypes_widen_exactly(tmp_path):
    base = ckpt.llama_state(dtype=torch.bfloat16)
    ft = {k: v.float() for k, v in base.items()}  # fp32 copy: widening is exact, so nothing changed
    ft["model.norm.weight"][:4] += 1e-6  # below a bf16 ULP: visible only because the fine-tune is fp32
    r = updelta.diff(ckpt.save(base, tmp_path / "b"), ckpt.save(ft, tmp_path / "f.bin"), spectral="off")
    t = r.tensors.set_index("name")
    assert (t.drop(index="model.norm.weight")["sparsity_exact"] == 1.0).all()
    row = t.loc["model.norm.weight"]
    assert row["dtype_base"] == "bfloat16" and row["dtype_ft"] == "float32"
    assert row["sparsity_exact"] == pytest.approx(1 - 4 / 16)
    assert row["sparsity_atol"] == 1.0  # 1e-6 <= atol 1e-5
    assert row["delta_fro"] == pytest.approx(float((ft["model.norm.weight"].double()
                                                    - base["model.norm.weight"].double()).norm()), rel=1e-6)


def test_aggregates_are_sums_not_averages(tmp_path):
    base = ckpt.llama_state(dtype=torch.float32)
    ft = ckpt.perturb(base, frac=0.4, scale=1e-2)
    r = updelta.diff(ckpt.save(base, tmp_path / "b"), ckpt.save(ft, tmp_path / "f"), spectral="off")
    w0 = torch.cat([v.double().reshape(-1) for v in base.values()])
    w1 = torch.cat([ft[k].double().reshape(-1) for k in base])
    d = w1 - w0
    s = r.summary.iloc[0]
    assert s["delta_fro"] == pytest.approx(float(d.norm()), rel=1e-6)
    assert s["base_fro"] == pytest.approx(float(w0.norm()), rel=1e-6)
    assert s["rel_delta"] == pytest.approx(float(d.norm() / w0.norm()), rel=1e-6)
    assert s["cos_delta_base"] == pytest.approx(float((d * w0).sum() / (d.norm() * w0.norm())), rel=1e-5)
    assert s["sparsity_exact"] == pytest.approx(float((w1 == w0).double().mean()), abs=1e-12)
    assert s["delta_mean_abs"] == pytest.approx(float(d.abs().mean()), rel=1e-6)
    assert s["delta_max"] == pytest.approx(float(d.abs().max()), rel=1e-6)
    assert s["numel"] == w0.numel() and s["n_tensors"] == len(base)
    # per component: attention of both layers together
    names = [k for k in base if ".self_attn." in k]
    a0 = torch.cat([base[k].double().reshape(-1) for k in names])
    a1 = torch.cat([ft[k].double().reshape(-1) for k in names])
    c = r.components.set_index("component").loc["attn"]
    assert c["rel_delta"] == pytest.approx(float((a1 - a0).norm() / a0.norm()), rel=1e-6)
    assert c["sparsity_atol"] == pytest.approx(float(((a1 - a0).abs() <= 1e-5).double().mean()), abs=1e-12)
    # per layer and component
    l1 = [k for k in base if k.startswith("model.layers.1.mlp.")]
    m0 = torch.cat([base[k].double().reshape(-1) for k in l1])
    m1 = torch.cat([ft[k].double().reshape(-1) for k in l1])
    lay = r.layers.set_index(["layer", "component"]).loc[(1, "mlp")]
    assert lay["delta_fro"] == pytest.approx(float((m1 - m0).norm()), rel=1e-6)
    assert lay["n_tensors"] == 3


def test_threads_and_block_sizes_do_not_change_results(tmp_path):
    base = ckpt.llama_state()
    b, f = ckpt.save(base, tmp_path / "b"), ckpt.save(ckpt.perturb(base), tmp_path / "f")
    one = updelta.diff(b, f, spectral="off", workers=1, block_elems=1 << 20).tensors
    many = updelta.diff(b, f, spectral="off", workers=3, block_elems=33).tensors
    _same(one, many)
    assert list(one["name"]) == list(many["name"])  # order is stable


def test_identical_checkpoints(tmp_path):
    base = ckpt.llama_state()
    b = ckpt.save(base, tmp_path / "b")
    s = updelta.diff(b, b, spectral="off").summary.iloc[0]
    assert s["delta_fro"] == 0 and s["sparsity_exact"] == 1 and s["sparsity_atol"] == 1 and s["sparsity_rtol"] == 1
    assert math.isnan(s["cos_delta_base"])


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".json"])
def test_outputs_round_trip(tmp_path, llama_pair, suffix):
    b, f, _, _ = llama_pair
    r = updelta.diff(b, f, spectral="off", histogram=True)
    out = r.save(tmp_path / f"out{suffix}")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    if suffix == ".parquet":
        md = json.loads(pq.read_schema(out).metadata[b"updelta"])
        assert md["options"]["atol"] == 1e-5 and md["base"]["path"] == str(b) and "ft" in md["runs"]
        back = updelta.load(out)
        _same(r.tensors, back.tensors)
        assert back.summary.iloc[0]["delta_fro"] == pytest.approx(r.summary.iloc[0]["delta_fro"])
        assert list(back.tensors["hist"].iloc[0]) == list(r.tensors["hist"].iloc[0])
    elif suffix == ".csv":
        back = pd.read_csv(out)
        assert len(back) == len(r.tensors) and json.loads(back["hist"].iloc[0]) == list(r.tensors["hist"].iloc[0])
    else:
        back = pd.read_json(out)
        assert len(back) == len(r.tensors) and set(CHEAP) <= set(back.columns)


def test_compare_directory_round_trip(tmp_path, llama_runs):
    b, runs = llama_runs
    r = updelta.compare(b, runs, spectral="off")
    r.save(tmp_path / "cmp")
    for f in ["tensors", "pairs", "pairs_layers", "pairs_summary", "layers", "summary"]:
        assert (tmp_path / "cmp" / f"{f}.parquet").exists(), f
    back = updelta.load(tmp_path / "cmp")
    assert back.runs == ["sft", "dft", "grpo"]
    assert len(back.pairs_summary) == 3
    np.testing.assert_allclose(back.pairs_summary["delta_cos"], r.pairs_summary["delta_cos"])
