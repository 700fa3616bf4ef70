"""Known-answer tests of `updelta.compare`: planted runs whose cross-run figures are known exactly.

Values are planted on dyadic grids so that every weight and every delta is exactly representable in
the stored dtype: the expected numbers follow from integer arithmetic, not from a second float
computation.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ckpt
import updelta
from updelta.errors import UpdeltaError

ATTN = "model.layers.0.self_attn.q_proj.weight"
MLP = "model.layers.1.mlp.up_proj.weight"


def grid_state(dtype=torch.float32, seed: int = 0) -> dict[str, torch.Tensor]:
    """A Llama-shaped state dict with values k/64 in [0.5, 1) * random sign (exact in bf16 and fp32)."""
    g = torch.Generator().manual_seed(seed)
    sd = ckpt.llama_state(dtype=torch.float32, seed=seed)
    out = {}
    for k, v in sd.items():
        mag = torch.randint(32, 64, v.shape, generator=g).float() / 64
        sign = torch.where(torch.rand(v.shape, generator=g) < 0.5, -1.0, 1.0)
        out[k] = (mag * sign).to(dtype)
    return out


def rotated(d: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """N with <N, d> = 0 exactly and ||N|| = ||d||: a 90-degree rotation of each pair of elements."""
    flat = d.reshape(-1)
    n = flat.numel() - flat.numel() % 2
    perm = torch.randperm(n, generator=g)
    i, j = perm[: n // 2], perm[n // 2:]
    out = torch.zeros_like(flat)
    out[i], out[j] = flat[j], -flat[i]
    if flat.numel() % 2:  # an odd element out: leave it 0 in N and 0 in d for exactness
        flat[perm.numel():] = 0
    return out.reshape(d.shape)


def test_delta_cos_known_per_tensor_and_whole_model(tmp_path):
    """D_b = a D_a + b N with <N, D_a> = 0 and ||N|| = ||D_a||: cos = a / sqrt(a^2 + b^2) per tensor."""
    g = torch.Generator().manual_seed(7)
    base = grid_state()
    da, db = {}, {}
    coeffs = {}
    for i, (k, v) in enumerate(base.items()):
        d = torch.randint(-8, 9, v.shape, generator=g).float() / 1024
        nrm = rotated(d, g)
        a, b = [(3, 4), (1, 0), (0, 1), (-5, 12), (8, -15)][i % 5]
        coeffs[k] = (a, b)
        da[k], db[k] = d, a * d + b * nrm
    run_a = {k: base[k] + da[k] for k in base}
    run_b = {k: base[k] + db[k] for k in base}
    for k in base:  # planted exactly: the stored delta is the planted one
        assert torch.equal(run_a[k] - base[k], da[k]) and torch.equal(run_b[k] - base[k], db[k])
    r = updelta.compare(ckpt.save(base, tmp_path / "base"), {"a": ckpt.save(run_a, tmp_path / "a"),
                                                            "b": ckpt.save(run_b, tmp_path / "b")}, spectral="off")
    p = r.pairs.set_index("name")
    for k, (a, b) in coeffs.items():
        if not da[k].any():
            continue
        assert p.loc[k, "delta_cos"] == pytest.approx(a / math.hypot(a, b), abs=1e-12), k
    # whole model = cosine of the flattened deltas (task-vector convention), not a mean of per-tensor cosines
    fa = torch.cat([da[k].reshape(-1).double() for k in base])
    fb = torch.cat([db[k].reshape(-1).double() for k in base])
    expect = float(fa @ fb / (fa.norm() * fb.norm()))
    got = float(r.pairs_summary["delta_cos"].iloc[0])
    assert got == pytest.approx(expect, abs=1e-12)
    assert abs(got - float(p["delta_cos"].mean())) > 1e-3  # the two conventions differ on this plant
    # per component: flattened over that component's tensors
    pc = r.pairs_components.set_index("component")
    for comp in ("attn", "mlp"):
        ks = [k for k in base if (".self_attn." in k) == (comp == "attn") and (".mlp." in k) == (comp == "mlp")]
        xa = torch.cat([da[k].reshape(-1).double() for k in ks])
        xb = torch.cat([db[k].reshape(-1).double() for k in ks])
        assert pc.loc[comp, "delta_cos"] == pytest.approx(float(xa @ xb / (xa.norm() * xb.norm())), abs=1e-12)


def plant_masks(base, sets: dict[str, dict[str, torch.Tensor]], signs: dict[str, dict[str, torch.Tensor]]):
    """Runs that change exactly the elements in `sets[run][tensor]` (bool masks) by +-1/4 (|D| / |W| >= 1/4:
    changed under exact, atol and rtol alike)."""
    out = {}
    for run, masks in sets.items():
        sd = {}
        for k, v in base.items():
            m = masks.get(k, torch.zeros(v.shape, dtype=torch.bool))
            sd[k] = (v.float() + m.float() * signs[run].get(k, torch.ones(v.shape)) * 0.25).to(v.dtype)
        out[run] = sd
    return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_masks_jaccard_overlaps_baselines_and_sign_agreement(tmp_path, dtype):
    base = grid_state(dtype)
    g = torch.Generator().manual_seed(3)
    ma, mb, sa, sb = {}, {}, {}, {}
    for k in (ATTN, MLP):
        shape = base[k].shape
        ma[k] = torch.rand(shape, generator=g) < (0.3 if k == ATTN else 0.6)
        mb[k] = torch.rand(shape, generator=g) < (0.5 if k == ATTN else 0.2)
        sa[k] = torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0)
        sb[k] = torch.where(torch.rand(shape, generator=g) < 0.7, sa[k], -sa[k])
    runs = plant_masks(base, {"a": ma, "b": mb}, {"a": sa, "b": sb})
    paths = {r: ckpt.save(sd, tmp_path / r) for r, sd in runs.items()}
    r = updelta.compare(ckpt.save(base, tmp_path / "base"), paths, spectral="off")
    p = r.pairs.set_index("name")
    tot = {"both": 0, "a": 0, "b": 0, "exp": 0.0, "agree": 0}
    for k in (ATTN, MLP):
        n = base[k].numel()
        A, B = int(ma[k].sum()), int(mb[k].sum())
        both = ma[k] & mb[k]
        AB = int(both.sum())
        agree = int((sa[k] == sb[k])[both].sum())
        exp = A * B / n
        for c in ("exact", "atol", "rtol"):
            assert p.loc[k, f"jaccard_{c}"] == pytest.approx(AB / (A + B - AB), abs=1e-12)
            assert p.loc[k, f"overlap_a_{c}"] == pytest.approx(AB / A, abs=1e-12)
            assert p.loc[k, f"overlap_b_{c}"] == pytest.approx(AB / B, abs=1e-12)
            da, db_ = A / n, B / n  # the independence baselines of metrics.md
            assert p.loc[k, f"jaccard_random_{c}"] == pytest.approx(da * db_ / (da + db_ - da * db_), rel=1e-12)
            assert p.loc[k, f"overlap_a_random_{c}"] == pytest.approx(db_, rel=1e-12)  # = density of B
            assert p.loc[k, f"overlap_b_random_{c}"] == pytest.approx(da, rel=1e-12)
        assert p.loc[k, "sign_agree"] == pytest.approx(agree / AB, abs=1e-12)
        assert p.loc[k, "n_both_exact"] == AB
        tot["both"] += AB
        tot["a"] += A
        tot["b"] += B
        tot["exp"] += exp
        tot["agree"] += agree
    # untouched tensors: nothing changed in either run
    other = [k for k in base if k not in (ATTN, MLP)][0]
    assert p.loc[other, "n_both_exact"] == 0 and math.isnan(p.loc[other, "jaccard_exact"])
    # whole model: counts summed over tensors; baseline from the expected intersection summed per tensor
    s = r.pairs_summary.iloc[0]
    assert s["jaccard_atol"] == pytest.approx(tot["both"] / (tot["a"] + tot["b"] - tot["both"]), abs=1e-12)
    assert s["overlap_a_atol"] == pytest.approx(tot["both"] / tot["a"], abs=1e-12)
    assert s["jaccard_random_atol"] == pytest.approx(tot["exp"] / (tot["a"] + tot["b"] - tot["exp"]), rel=1e-12)
    assert s["overlap_b_random_atol"] == pytest.approx(tot["exp"] / tot["b"], rel=1e-12)
    assert s["sign_agree"] == pytest.approx(tot["agree"] / tot["both"], abs=1e-12)
    # per layer x component: the attn tensor alone is layer 0's attention
    pl = r.pairs_layers
    row = pl[(pl["layer"] == 0) & (pl["component"] == "attn")].iloc[0]
    A, B, AB = int(ma[ATTN].sum()), int(mb[ATTN].sum()), int((ma[ATTN] & mb[ATTN]).sum())
    assert row["jaccard_exact"] == pytest.approx(AB / (A + B - AB), abs=1e-12)


def test_sparsity_conventions_disagree_where_they_should(tmp_path):
    """A tiny fp32 change (1e-7) is changed under exact, unchanged under atol 1e-5 and rtol 1e-3: masks differ."""
    base = grid_state(torch.float32)
    g = torch.Generator().manual_seed(5)
    k = MLP
    big = torch.rand(base[k].shape, generator=g) < 0.3
    tiny = (torch.rand(base[k].shape, generator=g) < 0.3) & ~big
    ra = {n: v.clone() for n, v in base.items()}
    ra[k] = base[k] + big.float() * 0.25 + tiny.float() * 2.0 ** -20
    rb = {n: v.clone() for n, v in base.items()}
    rb[k] = base[k] + (big | tiny).float() * 0.25
    r = updelta.compare(ckpt.save(base, tmp_path / "base"), {"a": ckpt.save(ra, tmp_path / "a"),
                                                            "b": ckpt.save(rb, tmp_path / "b")}, spectral="off")
    p = r.pairs.set_index("name").loc[k]
    nb, nt, nbt = int(big.sum()), int(tiny.sum()), int((big | tiny).sum())
    assert p["jaccard_exact"] == pytest.approx((nb + nt) / nbt, abs=1e-12)  # = 1
    assert p["jaccard_atol"] == pytest.approx(nb / nbt, abs=1e-12)
    assert p["jaccard_rtol"] == pytest.approx(nb / nbt, abs=1e-12)
    assert p["overlap_a_atol"] == 1.0 and p["overlap_b_atol"] == pytest.approx(nb / nbt, abs=1e-12)


def test_run_identical_to_base(tmp_path):
    base = grid_state(torch.bfloat16)
    g = torch.Generator().manual_seed(2)
    m = {ATTN: torch.rand(base[ATTN].shape, generator=g) < 0.4}
    runs = plant_masks(base, {"moved": m}, {"moved": {}})
    paths = {"same": ckpt.save(base, tmp_path / "same"), "moved": ckpt.save(runs["moved"], tmp_path / "moved")}
    r = updelta.compare(ckpt.save(base, tmp_path / "base"), paths, spectral="off")
    s = r.summary.set_index("run").loc["same"]
    assert s["delta_fro"] == 0 and s["delta_max"] == 0
    for c in ("exact", "atol", "rtol"):
        assert s[f"sparsity_{c}"] == 1.0
    p = r.pairs_summary.iloc[0]
    assert (p["run_a"], p["run_b"]) == ("same", "moved")
    assert math.isnan(p["delta_cos"])  # a zero update has no direction
    assert p["jaccard_exact"] == 0.0 and p["overlap_b_exact"] == 0.0  # nothing of 'moved' is changed in 'same'
    assert math.isnan(p["overlap_a_exact"]) and math.isnan(p["sign_agree"])  # 'same' changed nothing
    assert p["n_changed_b_exact"] == int(m[ATTN].sum())


def test_dtypes_and_formats_mix(tmp_path):
    """bf16 base; an fp32 safetensors run and a bf16 .bin run: widened exactly, same numbers as torch."""
    base = grid_state(torch.bfloat16)
    g = torch.Generator().manual_seed(11)
    r32 = {k: v.float() + (torch.rand(v.shape, generator=g) < 0.5).float() * torch.randint(
        -4, 5, v.shape, generator=g).float() * 2.0 ** -14 for k, v in base.items()}
    rbin = {k: (v.float() + (torch.rand(v.shape, generator=g) < 0.5).float() * 0.125).to(torch.bfloat16)
            for k, v in base.items()}
    paths = {"fp32": ckpt.save(r32, tmp_path / "fp32"), "bin": ckpt.save(rbin, tmp_path / "binrun", fmt="bin")}
    assert (tmp_path / "binrun" / "pytorch_model.bin").exists()
    r = updelta.compare(ckpt.save(base, tmp_path / "base"), paths, spectral="off")
    t = r.tensors
    assert set(t[t["run"] == "fp32"]["dtype_ft"]) == {"float32"}
    assert set(t[t["run"] == "bin"]["dtype_ft"]) == {"bfloat16"}
    assert r.meta["runs"]["bin"]["format"] != r.meta["runs"]["fp32"]["format"]
    w0 = torch.cat([v.double().reshape(-1) for v in base.values()])
    da = torch.cat([v.double().reshape(-1) for v in r32.values()]) - w0
    db = torch.cat([v.double().reshape(-1) for v in rbin.values()]) - w0
    p = r.pairs_summary.iloc[0]
    assert p["delta_cos"] == pytest.approx(float(da @ db / (da.norm() * db.norm())), abs=1e-10)
    A, B = int((da != 0).sum()), int((db != 0).sum())
    AB = int(((da != 0) & (db != 0)).sum())
    assert p["jaccard_exact"] == pytest.approx(AB / (A + B - AB), abs=1e-12)
    assert p["sign_agree"] == pytest.approx(float(((da > 0) == (db > 0))[(da != 0) & (db != 0)].double().mean()),
                                            abs=1e-12)
    s = r.summary.set_index("run")
    assert s.loc["fp32", "sparsity_exact"] == pytest.approx(1 - A / w0.numel(), abs=1e-12)
    # 2^-14 steps on weights >= 0.5: below eta 1e-3 relative, above atol 1e-5 absolute
    assert s.loc["fp32", "sparsity_rtol"] == 1.0
    assert s.loc["fp32", "sparsity_atol"] == pytest.approx(1 - A / w0.numel(), abs=1e-12)


def test_run_missing_a_tensor(tmp_path):
    base = grid_state(torch.bfloat16)
    g = torch.Generator().manual_seed(4)
    full = plant_masks(base, {r: {k: torch.rand(v.shape, generator=g) < 0.5 for k, v in base.items()}
                              for r in ("a", "b", "c")}, {"a": {}, "b": {}, "c": {}})
    del full["b"][MLP]
    paths = {r: ckpt.save(sd, tmp_path / r) for r, sd in full.items()}
    r = updelta.compare(ckpt.save(base, tmp_path / "base"), paths, spectral="off")
    assert r.meta["pairing"]["only_in_base"]["b"] == [MLP]
    assert r.meta["pairing"]["only_in_base"]["a"] == []
    p = r.pairs
    with_b = p[(p["run_a"] == "b") | (p["run_b"] == "b")]
    assert MLP not in set(with_b["name"])
    assert MLP in set(p[(p["run_a"] == "a") & (p["run_b"] == "c")]["name"])
    assert len(with_b) == 2 * (len(base) - 1)
    t = r.tensors
    assert MLP not in set(t[t["run"] == "b"]["name"])
    s = r.summary.set_index("run")
    assert s.loc["b", "numel"] == s.loc["a", "numel"] - base[MLP].numel()


def test_pairs_ordered_as_given_and_restrictable(tmp_path, llama_runs):
    b, runs = llama_runs
    r = updelta.compare(b, runs, spectral="off")
    assert list(zip(r.pairs_summary["run_a"], r.pairs_summary["run_b"])) == [("sft", "dft"), ("sft", "grpo"),
                                                                          ("dft", "grpo")]
    from updelta.scan.engine import scan
    from updelta.options import DiffOptions

    only = scan(b, runs, DiffOptions(spectral="off"), pairs=[("dft", "grpo")])
    assert list(zip(only.pairs_summary["run_a"], only.pairs_summary["run_b"])) == [("dft", "grpo")]
    np.testing.assert_allclose(only.pairs_summary["delta_cos"].iloc[0], r.pairs_summary["delta_cos"].iloc[2],
                               rtol=0, atol=0)
    with pytest.raises(UpdeltaError, match="two different runs"):
        scan(b, runs, DiffOptions(spectral="off"), pairs=[("sft", "nope")])


def test_compare_cli_writes_every_table(tmp_path, llama_runs):
    import subprocess
    import sys

    b, runs = llama_runs
    out = tmp_path / "cmp"
    cmd = [sys.executable, "-m", "updelta.cli", "compare", str(b)] + [f"{k}={v}" for k, v in runs.items()] + [
        "--out", str(out), "--spectral", "off"]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**__import__("os").environ, "UPDELTA_PROGRESS": "0"})
    assert res.returncode == 0, res.stderr
    for f in ("tensors", "pairs", "pairs_layers", "pairs_summary", "layers", "summary"):
        assert (out / f"{f}.parquet").exists()
    back = updelta.load(out)
    assert set(back.tensors["run"]) == set(runs)
    cols = set(back.pairs.columns)
    for c in ("exact", "atol", "rtol"):
        assert {f"jaccard_{c}", f"jaccard_random_{c}", f"overlap_a_{c}", f"overlap_b_{c}",
                f"overlap_a_random_{c}", f"overlap_b_random_{c}"} <= cols
    assert {"run_a", "run_b", "name", "delta_cos", "sign_agree"} <= cols
