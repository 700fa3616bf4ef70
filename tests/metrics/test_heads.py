"""Per-head figures on planted updates of tiny transformers models (docs/metrics.md, Where an update sits).

Each case plants an update in query head 5 and KV head 1 of layer 1 (8 query heads, 2 KV heads, head dim 8) at
the rows the family's modelling code reads them from (written out here by hand, independently of
`updelta.families.heads`), and in the o-projection columns of head 3; only those heads may be non-zero, with norms
equal to the float64 norms of the planted rows.
"""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

import updelta

H, G, D, HID = 8, 2, 8, 64
SMALL = dict(hidden_size=HID, intermediate_size=96, num_hidden_layers=2, num_attention_heads=H, vocab_size=64,
             max_position_embeddings=32)


def _rows(a, b):
    return list(range(a, b))


# case -> (config class, kwargs, {tensor suffix: [(part, head, rows or cols, axis)]})
def _plants(case):
    q5, k1 = _rows(5 * D, 6 * D), _rows(1 * D, 2 * D)
    o3 = ("o", 3, _rows(3 * D, 4 * D), 1)
    if case == "llama":
        return {"self_attn.q_proj.weight": [("q", 5, q5, 0)], "self_attn.k_proj.weight": [("k", 1, k1, 0)],
                "self_attn.o_proj.weight": [o3]}
    if case == "phi3":  # [q (H d); k (G d); v (G d)]
        return {"self_attn.qkv_proj.weight": [("q", 5, q5, 0), ("k", 1, _rows(H * D + D, H * D + 2 * D), 0)],
                "self_attn.o_proj.weight": [o3]}
    if case == "gpt_neox":  # view(..., heads, 3 * d): per head [q_h; k_h; v_h] (KV head 1 = head 1)
        return {"attention.query_key_value.weight": [("q", 5, _rows(5 * 3 * D, 5 * 3 * D + D), 0),
                                                      ("k", 1, _rows(3 * D + D, 3 * D + 2 * D), 0)],
                "attention.dense.weight": [o3]}
    if case == "falcon":  # new decoder: view(..., G, H / G + 2, d): per group [q x H/G; k; v]
        per = (H // G + 2) * D
        return {"self_attention.query_key_value.weight": [("q", 5, _rows(per + 1 * D, per + 2 * D), 0),
                                                           ("k", 1, _rows(per + (H // G) * D,
                                                                          per + (H // G + 1) * D), 0)],
                "self_attention.dense.weight": [o3]}
    raise KeyError(case)


CASES = {
    "llama": ("LlamaConfig", dict(num_key_value_heads=G), "model.layers.1."),
    "phi3": ("Phi3Config", dict(num_key_value_heads=G, pad_token_id=0), "model.layers.1."),
    "gpt_neox": ("GPTNeoXConfig", {}, "gpt_neox.layers.1."),
    "falcon": ("FalconConfig", dict(new_decoder_architecture=True, num_kv_heads=G), "transformer.h.1."),
}


def _save_model(case, out):
    import transformers

    cls, extra, _ = CASES[case]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = getattr(transformers, cls)(**{**SMALL, **extra})
        transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    return out


def _plant(base_dir, ft_dir, prefix, plants, scale=1e-2, seed=1):
    """Copy base_dir to ft_dir with the planted updates; {(module suffix, part, head): float64 norm}."""
    ft_dir.mkdir()
    (ft_dir / "config.json").write_text((base_dir / "config.json").read_text())
    sd = load_file(str(base_dir / "model.safetensors"))
    g = torch.Generator().manual_seed(seed)
    want = {}
    for suffix, items in plants.items():
        w = sd[prefix + suffix].clone()
        for part, head, idx, axis in items:
            noise = torch.randn(len(idx), w.shape[1 - axis], generator=g) * scale
            before = w.double()
            if axis == 0:
                w[idx, :] += noise.to(w.dtype)
            else:
                w[:, idx] += noise.T.to(w.dtype)
            sel = (w.double() - before)[idx, :] if axis == 0 else (w.double() - before)[:, idx]
            want[(suffix, part, head)] = float(sel.norm())
        sd[prefix + suffix] = w
    save_file({k: v.contiguous() for k, v in sd.items()}, str(ft_dir / "model.safetensors"))
    return want


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    out = {}
    for case in CASES:
        root = tmp_path_factory.mktemp(case)
        base = _save_model(case, root / "base")
        out[case] = (base, root / "ft", _plant(base, root / "ft", CASES[case][2], _plants(case)))
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_only_planted_heads_are_nonzero(planted, case):
    base, ft, want = planted[case]
    res = updelta.diff(base, ft, spectral="off", block_elems=1000)  # blocks end mid-row
    heads = res.heads
    kv = H if case == "gpt_neox" else G  # GPT-NeoX has no grouped-query attention
    assert res.meta["pairing"]["heads"]["heads"] == H and res.meta["pairing"]["heads"]["kv_heads"] == kv
    nz = heads[heads["delta_fro"] > 0]
    got = {(n.rsplit(".", 2)[-2], p, int(h)): v for n, p, h, v in
           zip(nz["name"], nz["part"], nz["head"], nz["delta_fro"])}
    exp = {(s.rsplit(".", 2)[-2], p, h): v for (s, p, h), v in want.items()}
    assert set(got) == set(exp)
    for k, v in exp.items():
        assert got[k] == pytest.approx(v, rel=1e-6)
    # per tensor: the heads cover every row (or column) once, shares of the tensor's energy add up to 1
    for name, g in heads.groupby("name"):
        t = res.tensors[res.tensors["name"] == name].iloc[0]
        # (the C kernel sums squares in float32 lanes per chunk of 256, the head sums in float64)
        assert g["ss_delta"].sum() == pytest.approx(t["ss_delta"], rel=1e-6, abs=0)
        assert g["ss_base"].sum() == pytest.approx(t["ss_base"], rel=1e-6)
        assert g["n_compared"].sum() == t["n_compared"]
        if t["ss_delta"] > 0:
            assert g["energy_share"].sum() == pytest.approx(1.0, rel=1e-9)
    parts = heads.groupby("part")["head"].nunique().to_dict()
    assert parts == {"q": H, "k": kv, "v": kv, "o": H}
    untouched = heads[(heads["delta_fro"] == 0)]
    assert (untouched["sparsity_exact"] == 1.0).all()


def test_gqa_pairs_heads_and_folder_output(planted, tmp_path):
    base, ft, _ = planted["llama"]
    ft2 = tmp_path / "ft2"
    _plant(base, ft2, CASES["llama"][2], _plants("llama"), seed=7)
    res = updelta.compare(base, {"a": ft, "b": ft2}, spectral="off")
    ph = res.pairs_heads
    assert set(ph.columns) >= {"run_a", "run_b", "layer", "module", "part", "head", "delta_cos"}
    q5 = ph[(ph["module"] == "q_proj") & (ph["layer"] == 1) & (ph["head"] == 5)]
    assert len(q5) == 1 and abs(q5["delta_cos"].iloc[0]) < 0.3  # independent noise
    assert ph[(ph["module"] == "q_proj") & (ph["head"] == 4)]["delta_cos"].isna().all()  # unchanged: undefined
    out = res.save(tmp_path / "out")
    back = updelta.load(out)
    assert (out / "heads.parquet").exists() and len(back.heads) == len(res.heads)
    assert back.heads["head"].tolist() == res.heads["head"].tolist()


def test_heads_skipped_with_a_note(planted, tmp_path):
    base, ft, _ = planted["llama"]
    bad = tmp_path / "bad"
    bad.mkdir()
    cfg = json.loads((base / "config.json").read_text())
    cfg["num_key_value_heads"] = 4  # k_proj has 2 heads of 8 rows: the shapes disagree
    (bad / "config.json").write_text(json.dumps(cfg))
    (bad / "model.safetensors").symlink_to(base / "model.safetensors")
    res = updelta.diff(bad, ft, spectral="off")
    assert res.heads.empty
    assert "k_proj" in res.meta["pairing"]["heads"]["skipped"]
    bare = updelta.diff(base / "model.safetensors", ft / "model.safetensors", spectral="off")
    assert bare.heads.empty and "config.json" in bare.meta["pairing"]["heads"]["skipped"]


def test_report_draws_the_heads_figure_or_says_why_not(planted):
    from updelta import plot as P
    from updelta.report.figures import _specs
    base, ft, _ = planted["llama"]

    def heads_spec(result):
        return next(s for s in _specs(result, {}) if s[0] == "heads_energy_share")
    _, _, fn, skip, draw = heads_spec(updelta.diff(base, ft, spectral="off"))
    assert fn == "heads_heatmap" and skip is None
    assert draw(getattr(P, fn)).axes  # drawn from the result's heads table
    bare = updelta.diff(base / "model.safetensors", ft / "model.safetensors", spectral="off")
    why = heads_spec(bare)[3]
    assert why.startswith("no per-head rows (") and "config.json" in why


@pytest.mark.parametrize("case", ["llama", "gpt_neox"])
def test_c_kernel_equals_torch_reference_and_leaves_the_cheap_sums_alone(planted, case, tmp_path, monkeypatch):
    """The fused kernels (`_fused.stats_rowcol`, `_fused.stats_heads`: the cheap sums and the where sums in one
    pass) against the torch path (`jobs_where.block`) on every where table, with a second run so that the
    pairs' per-head cosines are exercised, blocks ending mid-row; and the cheap columns with the where work
    bit for bit those without it (`--no-where`: the plain `stats` kernel)."""
    from updelta.scan.jobs import kernel

    if kernel.fused is None:
        pytest.fail("the C kernel updelta._fused was not built")
    base, ft, _ = planted[case]
    ft2 = tmp_path / "ft2"
    _plant(base, ft2, CASES[case][2], _plants(case), seed=5)
    sd = load_file(str(ft2 / "model.safetensors"))  # and every other 2-D tensor (MLP, embeddings) moved a little
    g = torch.Generator().manual_seed(9)
    for k, w in sd.items():
        if w.dim() == 2 and "attention" not in k and "attn" not in k:
            sd[k] = w + torch.randn(w.shape, generator=g).to(w.dtype) * 1e-3 * torch.rand(w.shape[0], 1, generator=g)
    save_file(sd, str(ft2 / "model.safetensors"))
    runs = {"a": ft, "b": ft2}
    fast = updelta.compare(base, runs, spectral="off", block_elems=1000, histogram=True)
    plain = updelta.compare(base, runs, spectral="off", block_elems=1000, histogram=True, where=False)
    cheap = ["delta_fro", "base_fro", "rel_delta", "delta_max", "delta_mean_abs", "cos_delta_base",
             "sparsity_exact", "sparsity_atol", "sparsity_rtol", "n_compared"]
    assert fast.tensors[cheap].equals(plain.tensors[cheap])
    assert [list(h) for h in fast.tensors["hist"]] == [list(h) for h in plain.tensors["hist"]]
    monkeypatch.setattr(kernel, "fused", None)
    slow = updelta.compare(base, runs, spectral="off", block_elems=1000, histogram=True)
    conc = [c for c in fast.tensors.columns if c.startswith(("row_", "col_", "rows_", "cols_"))]
    assert len(conc) == 8
    import numpy as np
    np.testing.assert_allclose(fast.tensors[conc].to_numpy(float), slow.tensors[conc].to_numpy(float), rtol=1e-9,
                               atol=1e-12)
    for table in ("heads", "pairs_heads", "neurons"):
        a, b = getattr(fast, table), getattr(slow, table)
        assert len(a) == len(b) > 0, table
        for c in a.columns:
            if a[c].dtype.kind == "f":
                np.testing.assert_allclose(a[c].to_numpy(), b[c].to_numpy(), rtol=1e-9, atol=1e-15, err_msg=c)
            else:
                assert a[c].tolist() == b[c].tolist(), (table, c)
