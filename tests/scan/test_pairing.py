"""Pairing by name: prefixes, tied heads, vocabulary resize, mismatches, filters, one-sided tensors."""
import math

import pytest
import torch

import updelta
from updelta.errors import PairingError

import ckpt


def test_wrapper_prefixes_are_stripped(tmp_path):
    base = ckpt.llama_state()
    ft = {"module." + k: v for k, v in ckpt.perturb(base).items()}
    r = updelta.diff(ckpt.save(base, tmp_path / "b"), ckpt.save(ft, tmp_path / "f"), spectral="off")
    assert len(r.tensors) == len(base)
    assert set(r.tensors["name"]) == set(base)  # names shown as the base stores them


def test_tied_head_in_base_resolved_against_embedding(tmp_path):
    base = ckpt.llama_state(head=False)
    ft = ckpt.perturb(base)
    ft["lm_head.weight"] = base["model.embed_tokens.weight"].clone()
    ft["lm_head.weight"][0, 0] += 1.0
    r = updelta.diff(ckpt.save(base, tmp_path / "b"), ckpt.save(ft, tmp_path / "f"), spectral="off")
    head = r.tensors.set_index("name").loc["lm_head.weight"]
    assert bool(head["tied"]) and head["component"] == "head"
    assert head["sparsity_exact"] == pytest.approx(1 - 1 / head["numel"])
    assert any(t["name"] == "lm_head.weight" and t["side"] == "base" for t in r.meta["pairing"]["tied"])


def test_head_tied_in_both_is_reported_not_dropped(tmp_path):
    base = ckpt.llama_state(head=False)
    r = updelta.diff(ckpt.save(base, tmp_path / "b"), ckpt.save(ckpt.perturb(base), tmp_path / "f"), spectral="off")
    assert "lm_head.weight" not in set(r.tensors["name"])
    assert any(t["name"] == "lm_head.weight" and t["side"] == "both" for t in r.meta["pairing"]["tied"])


def test_vocabulary_resize_compares_common_rows(tmp_path):
    base = ckpt.llama_state(vocab=40)
    ft = {k: v.clone() for k, v in base.items()}
    extra = torch.full((4, 16), 0.5, dtype=torch.bfloat16)
    ft["model.embed_tokens.weight"] = torch.cat([base["model.embed_tokens.weight"], extra])
    ft["model.embed_tokens.weight"][0, :3] += 1.0
    r = updelta.diff(ckpt.save(base, tmp_path / "b"), ckpt.save(ft, tmp_path / "f"), spectral="off")
    row = r.tensors.set_index("name").loc["model.embed_tokens.weight"]
    assert bool(row["resized"]) and row["added_rows"] == 4 and row["numel"] == 40 * 16
    assert row["added_fro"] == pytest.approx(math.sqrt(4 * 16 * 0.25))
    assert row["sparsity_exact"] == pytest.approx(1 - 3 / 640)
    assert r.meta["pairing"]["resized"][0]["ft_shape"] == [44, 16]


def test_other_shape_mismatch_is_an_error_naming_tensor_and_shapes(tmp_path):
    base = ckpt.llama_state()
    ft = dict(base)
    ft["model.layers.0.mlp.up_proj.weight"] = torch.zeros(32, 17, dtype=torch.bfloat16)
    b, f = ckpt.save(base, tmp_path / "b"), ckpt.save(ft, tmp_path / "f")
    with pytest.raises(PairingError) as e:
        updelta.diff(b, f, spectral="off")
    msg = str(e.value)
    assert "model.layers.0.mlp.up_proj.weight" in msg and "[32, 17]" in msg and "[32, 16]" in msg
    r = updelta.diff(b, f, spectral="off", on_shape_mismatch="skip")
    assert "model.layers.0.mlp.up_proj.weight" not in set(r.tensors["name"])
    assert r.meta["pairing"]["skipped_shape"][0]["name"] == "model.layers.0.mlp.up_proj.weight"


def test_tensors_on_one_side_are_listed(tmp_path):
    base = ckpt.llama_state()
    ft = dict(base)
    del ft["model.layers.1.mlp.up_proj.weight"]
    ft["model.extra.weight"] = torch.ones(3, dtype=torch.bfloat16)
    r = updelta.diff(ckpt.save(base, tmp_path / "b"), ckpt.save(ft, tmp_path / "f"), spectral="off", name="ft")
    assert r.meta["pairing"]["only_in_base"]["ft"] == ["model.layers.1.mlp.up_proj.weight"]
    assert r.meta["pairing"]["only_in_run"]["ft"] == ["model.extra.weight"]


def test_include_exclude_filters(tmp_path):
    base = ckpt.llama_state()
    b, f = ckpt.save(base, tmp_path / "b"), ckpt.save(ckpt.perturb(base), tmp_path / "f")
    r = updelta.diff(b, f, spectral="off", include=[r"self_attn"], exclude=[r"layers\.1\."])
    assert set(r.tensors["module"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert set(r.tensors["layer"]) == {0}
    assert r.meta["pairing"]["filtered_out"] == len(base) - 4


def test_gpt2_names_and_conv1d(tmp_path):
    base = ckpt.gpt2_state()
    r = updelta.diff(ckpt.save(base, tmp_path / "b.safetensors"), ckpt.save(ckpt.perturb(base), tmp_path / "f.bin"),
                     spectral="off")
    t = r.tensors.set_index("name")
    assert r.meta["pairing"]["family"] == "gpt2"
    a = t.loc["transformer.h.1.attn.c_proj.weight"]
    m = t.loc["transformer.h.1.mlp.c_proj.weight"]
    assert (a["layer"], a["component"], a["module"]) == (1, "attn", "c_proj")
    assert (m["layer"], m["component"], m["module"]) == (1, "mlp", "c_proj")
    assert t.loc["transformer.h.0.attn.c_attn.bias", "param"] == "bias"
    assert t.loc["transformer.wte.weight", "component"] == "embed"
    assert pd_isna(t.loc["transformer.ln_f.weight", "layer"])
    assert any(x["name"] == "lm_head.weight" for x in r.meta["pairing"]["tied"])


def pd_isna(v):
    import pandas as pd
    return pd.isna(v)


@pytest.mark.parametrize("name,layer,component,module", [
    ("gpt_neox.layers.3.attention.query_key_value.weight", 3, "attn", "query_key_value"),
    ("gpt_neox.layers.3.mlp.dense_4h_to_h.weight", 3, "mlp", "dense_4h_to_h"),
    ("embed_out.weight", None, "head", "embed_out"),
    ("gpt_neox.final_layer_norm.weight", None, "norm", "final_layer_norm"),
])
def test_neox_names(name, layer, component, module):
    from updelta.families.naming import detect_family, parse
    fam = detect_family([name, "gpt_neox.layers.0.attention.query_key_value.weight"])
    assert fam.name == "gpt_neox"
    p = parse(name, fam)
    assert (p.layer, p.component, p.module) == (layer, component, module)


@pytest.mark.parametrize("name,layer,component,module", [
    ("model.layers.5.self_attn.qkv_proj.weight", 5, "attn", "qkv_proj"),
    ("model.layers.5.mlp.gate_up_proj.weight", 5, "mlp", "gate_up_proj"),
])
def test_phi3_names(name, layer, component, module):
    from updelta.families.naming import detect_family, parse
    fam = detect_family([name, "model.layers.0.self_attn.qkv_proj.weight"])
    assert fam.name == "phi3"
    p = parse(name, fam)
    assert (p.layer, p.component, p.module) == (layer, component, module)


def test_generic_fallback_family():
    from updelta.families.naming import detect_family, parse
    names = ["blocks.2.attn.qkv.weight", "blocks.2.ffn.w1.weight", "tok_embeddings.weight", "norm_out.weight"]
    fam = detect_family(names)
    assert fam.name == "generic"
    p0, p1 = parse(names[0], fam), parse(names[1], fam)
    assert (p0.layer, p0.component, p0.module) == (2, "attn", "qkv")
    assert (p1.layer, p1.component, p1.module) == (2, "mlp", "w1")
    assert parse(names[2], fam).component == "embed"
    assert parse(names[3], fam).component == "norm"
