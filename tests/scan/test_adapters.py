"""PEFT adapters as runs (docs/adapters.md): every number against the dense diff of a float64 merge.

Adapters are made with the real `peft` library on tiny `transformers` models; the reference of each is
`merge_and_unload` on a float64 copy of the PEFT model, saved, and diffed densely by updelta (float64 W1, so the
reference D is exact to ~1e-16 of W0).
"""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import updelta
from updelta.errors import UpdeltaError
from tests.clirun import run_main

EXACT = ["delta_fro", "base_fro", "rel_delta", "cos_delta_base", "delta_max", "delta_mean_abs", "ss_delta", "ss_base",
         "dot_delta_base", "sum_abs_delta", "n_compared"]
SPECTRAL = ["stable_rank", "topk_energy", "energy_rank_90", "energy_rank_99", "erank", "rank_frac", "nss",
            "intruders", "angle_u_max_deg", "angle_v_max_deg"]
SPARSITY = ["sparsity_exact", "sparsity_atol", "sparsity_rtol"]


def _llama(bias: bool = False):
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                        attention_bias=bias, mlp_bias=bias))


def _gpt2():
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=16,
                                      bos_token_id=0, eos_token_id=0))


def _perturb(pm, *parts: str, seed: int) -> None:
    """Train-like change of the trainable copies (modules_to_save, biases, DoRA magnitudes) that init leaves equal."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if p.requires_grad and any(s in n for s in parts):
                p.add_(torch.randn(p.shape, generator=g) * 0.05)


# name -> (model maker, LoraConfig kwargs, perturbed parameter parts)
CASES = {
    "patterns": (lambda: _llama(True), dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                            rank_pattern={"down_proj": 2, "layers.1.self_attn.v_proj": 6},
                                            alpha_pattern={"v_proj": 3}, modules_to_save=["lm_head"], bias="all"),
                 ("modules_to_save", "bias")),
    "rslora_embed": (_llama, dict(r=8, lora_alpha=4, use_rslora=True,
                                  target_modules=["q_proj", "k_proj", "o_proj", "gate_proj", "up_proj",
                                                  "embed_tokens"]), ()),
    "lora_bias": (lambda: _llama(True), dict(r=2, lora_alpha=2, target_modules=["q_proj", "up_proj"],
                                             lora_bias=True), ("lora_B.bias",)),
    "dora": (_llama, dict(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"], use_dora=True),
             ("lora_magnitude_vector",)),
    "gpt2_fifo": (_gpt2, dict(r=4, lora_alpha=16, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True),
                  ()),
}


def _merged64(pm):
    m = copy.deepcopy(pm).double().merge_and_unload()
    out, seen = {}, set()
    for k, v in m.state_dict().items():  # a tied head shares the embedding's storage: saved once, as HF does
        if v.data_ptr() not in seen:
            seen.add(v.data_ptr())
            out[k] = v.detach().contiguous()
    return out


@pytest.fixture(scope="session")
def made(tmp_path_factory):
    """{case: (base folder, adapter folder, float64 merged folder)}, built once per session."""
    root = tmp_path_factory.mktemp("adapters")
    out = {}
    for i, (case, (make, cfg, parts)) in enumerate(CASES.items()):
        torch.manual_seed(i)
        model = make()
        base = root / case / "base"
        model.save_pretrained(base)
        config = json.loads((base / "config.json").read_text())
        pm = get_peft_model(model, LoraConfig(init_lora_weights=False, **cfg))
        if parts:
            _perturb(pm, *parts, seed=i)
        pm.save_pretrained(root / case / "adapter")
        merged = root / case / "merged"
        merged.mkdir()
        save_file(_merged64(pm), str(merged / "model.safetensors"))
        (merged / "config.json").write_text(json.dumps(config))
        out[case] = (base, root / case / "adapter", merged)
    # a second adapter of the "dora" base for adapter-vs-adapter pairs
    base = out["dora"][0]
    torch.manual_seed(99)
    model = LlamaForCausalLM.from_pretrained(base)
    pm = get_peft_model(model, LoraConfig(init_lora_weights=False, r=3, lora_alpha=5,
                                          target_modules=["q_proj", "v_proj"]))
    pm.save_pretrained(root / "second" / "adapter")
    (root / "second" / "merged").mkdir(parents=True)
    save_file(_merged64(pm), str(root / "second" / "merged" / "model.safetensors"))
    (root / "second" / "merged" / "config.json").write_text((base / "config.json").read_text())
    out["second"] = (base, root / "second" / "adapter", root / "second" / "merged")
    return out


def _close(a, b, col, name, rel=1e-6, abs_=1e-9):
    if a is None or b is None or (isinstance(a, float) and math.isnan(a)):
        assert (b is None or (isinstance(b, float) and math.isnan(b))) and \
               (a is None or (isinstance(a, float) and math.isnan(a))), (col, name, a, b)
        return
    assert np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=rel, atol=abs_), (col, name, a, b)


def _rows(res, run):
    return res.tensors[res.tensors["run"] == run].set_index("name")


@pytest.mark.parametrize("case", list(CASES))
def test_adapter_equals_the_float64_merge(made, case):
    base, ad, merged = made[case]
    res = updelta.compare(base, {"ad": ad, "ref": merged}, spectral="full", spectral_float64=True, progress=False)
    a, r = _rows(res, "ad"), _rows(res, "ref")
    assert list(a.index) == list(r.index)  # one row per base tensor, base names, base order
    changed = r.index[r["delta_fro"] > 0]
    assert len(changed) >= 4
    factored = a.index[a["sparsity_exact"].isna()]
    assert set(factored) <= set(changed) and len(factored) >= 2
    for name in a.index:
        for col in EXACT:
            _close(a.at[name, col], r.at[name, col], col, name, abs_=1e-12)
        for col in ("topk_sv", "principal_cos_u", "principal_cos_v"):
            _close(a.at[name, col], r.at[name, col], col, name, abs_=1e-9)
        for col in SPECTRAL:
            tol = 1e-5 if col.startswith("angle") else 1e-6  # degrees from float64 SVDs of W1 = W0 + D
            _close(a.at[name, col], r.at[name, col], col, name, rel=tol, abs_=1e-7)
        if name not in factored:  # untouched, full (modules_to_save, bias) and bias tensors stored exactly
            for col in SPARSITY:
                _close(a.at[name, col], r.at[name, col], col, name)
        else:
            assert a.loc[name, ["n_eq", "n_le_atol", "n_le_rtol"]].isna().all()
            assert a.at[name, "offprincipal_overlap"] is None or math.isnan(a.at[name, "offprincipal_overlap"])
    # whole model: norms and direction equal the merged model's; sparsity over the rows that have counts
    sa, sr = (res.summary.set_index("run").loc[x] for x in ("ad", "ref"))
    for col in ("delta_fro", "base_fro", "rel_delta", "cos_delta_base", "delta_max", "delta_mean_abs"):
        _close(sa[col], sr[col], col, "summary")
    assert sa["n_sparsity_null"] == len(factored)
    kept = r.drop(index=factored)
    _close(sa["sparsity_exact"], kept["n_eq"].sum() / kept["n_compared"].sum(), "sparsity", "summary")
    # the adapter against the full fine-tune it equals: streamed, cosine 1 on every changed tensor
    p = res.pairs.set_index("name")
    assert np.allclose(p.loc[changed, "delta_cos"].astype(float), 1.0, atol=1e-9)
    assert p.loc[factored, "jaccard_exact"].isna().all()


def test_rank_pattern_and_scales_are_peft_s(made):
    base, ad, _ = made["patterns"]
    res = updelta.diff(base, ad, spectral="fast", progress=False, name="ad")
    t = res.tensors.set_index("name")
    rank = lambda n: int((np.asarray(t.at[n, "topk_sv"]) > 1e-9 * t.at[n, "topk_sv"][0]).sum())  # noqa: E731
    assert rank("model.layers.0.mlp.down_proj.weight") == 2
    assert rank("model.layers.1.self_attn.v_proj.weight") == 6
    assert rank("model.layers.0.self_attn.v_proj.weight") == 4
    assert t.at["model.layers.0.self_attn.k_proj.weight", "delta_fro"] == 0  # untouched: D = 0
    assert t.at["model.layers.0.self_attn.k_proj.bias", "delta_fro"] > 0  # bias="all": a full tensor


def test_two_adapters_of_one_base_from_the_factors(made):
    base, ad1, m1 = made["dora"]
    _, ad2, m2 = made["second"]
    ref = updelta.compare(base, {"a": m1, "b": m2}, spectral="off", progress=False).pairs.set_index("name")
    # plain LoRA pairs come from the factors; the DoRA one is streamed
    _, _, _ = made["rslora_embed"]
    got = updelta.compare(base, {"a": ad1, "b": ad2}, spectral="off", progress=False).pairs.set_index("name")
    for name in ref.index:
        for col in ("delta_cos", "dot", "ss_delta_a", "ss_delta_b"):
            _close(got.at[name, col], ref.at[name, col], col, name, abs_=1e-12)
    second = updelta.compare(base, {"b": ad2, "b2": ad2}, spectral="off", progress=False).pairs.set_index("name")
    q = "model.layers.0.self_attn.v_proj.weight"
    assert math.isclose(second.at[q, "delta_cos"], 1.0, rel_tol=1e-12)
    assert math.isclose(second.at[q, "dot"], ref.at[q, "ss_delta_b"], rel_tol=1e-9)


@pytest.mark.parametrize("md", ["bfloat16", "float32"])
def test_merge_dtype_is_the_merged_checkpoint(made, tmp_path, md):
    """--merge-dtype: the numbers of a checkpoint merged as PEFT merges (safe_merge: D in float32, cast, added)."""
    base, ad, _ = made["rslora_embed"]
    from peft import PeftModel

    dt = getattr(torch, md)
    pm = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base), ad)
    for n, p in pm.named_parameters():  # the base in the merge dtype, the factors as stored (float32)
        if "lora_" not in n:
            p.data = p.data.to(dt)
    merged = pm.merge_and_unload(safe_merge=True)
    out = tmp_path / "merged"
    merged.save_pretrained(out)
    res = updelta.compare(base, {"ad": ad, "ref": out}, spectral="full", merge_dtype=md, progress=False)
    a, r = _rows(res, "ad"), _rows(res, "ref")
    targets = CASES["rslora_embed"][1]["target_modules"]
    folded = [n for n in a.index if any(f"{m}." in n for m in targets)]  # the others stay as the base stores them
    assert (a.loc[folded, "dtype_ft"] == md).all()
    assert len(folded) == 2 * 5 + 1
    for name in folded:
        for col in SPARSITY + ["n_eq", "n_le_atol", "n_le_rtol", "n_compared", "intruders", "offprincipal_overlap"]:
            _close(a.at[name, col], r.at[name, col], col, name, rel=1e-12, abs_=0)  # the same stored values
        scale = math.sqrt(r.at[name, "ss_delta"] * r.at[name, "ss_base"])
        for col in EXACT:  # the dense reference sums in float32 lanes (C kernel): agreement to its rounding
            abs_ = {"cos_delta_base": 1e-8, "dot_delta_base": 1e-8 * scale}.get(col, 1e-12)
            _close(a.at[name, col], r.at[name, col], col, name, rel=1e-6, abs_=abs_)
    assert (a.drop(index=folded)["delta_fro"] == 0).all()
    assert "n_sparsity_null" not in res.summary or (res.summary["n_sparsity_null"] == 0).all()


def _edit(src, dst, cfg=None, tensors=None):
    dst.mkdir(parents=True)
    c = json.loads((src / "adapter_config.json").read_text())
    c.update(cfg or {})
    (dst / "adapter_config.json").write_text(json.dumps(c))
    sd = load_file(str(src / "adapter_model.safetensors"))
    save_file(tensors(sd) if tensors else sd, str(dst / "adapter_model.safetensors"))
    return dst


def _rank_mismatch(sd):
    k = next(k for k in sd if k.endswith("lora_A.weight"))
    sd[k] = sd[k][:-1].contiguous()
    return sd


def _missing_target(sd):
    k = next(k for k in sd if "lora_A" in k)
    sd[k.replace("layers.0", "layers.7")] = sd[k].clone()
    sd[k.replace("layers.0", "layers.7").replace("lora_A", "lora_B")] = sd[k.replace("lora_A", "lora_B")].clone()
    return sd


@pytest.mark.parametrize("bad, words", [
    (dict(tensors=_missing_target), "does not have"),
    (dict(tensors=_rank_mismatch), "rank"),
    (dict(cfg={"init_lora_weights": "pissa_niter_4"}), "pissa"),
    (dict(cfg={"peft_type": "IA3"}), "IA3"),
])
def test_bad_adapters_exit_2_in_one_line(made, tmp_path, monkeypatch, capsys, bad, words):
    base, ad, _ = made["dora"]
    broken = _edit(ad, tmp_path / "broken", **bad)
    out = tmp_path / "out.parquet"
    code, stdout, err = run_main(monkeypatch, capsys, "diff", base, broken, "--out", out)
    assert code == 2 and err.count("\n") == 1 and words in err and "broken" in err, err
    assert not out.exists() and stdout == ""


def test_factors_that_do_not_fit_the_base_are_refused(made):
    base, _, _ = made["gpt2_fifo"]
    _, ad, _ = made["dora"]  # a Llama adapter against a GPT-2 base
    with pytest.raises(UpdeltaError, match="does not have"):
        updelta.diff(base, ad, progress=False)
