"""Factored updates (PEFT LoRA adapters): factors read with the right scale, metrics equal the dense update's."""
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from updelta.errors import CheckpointError
from updelta.io import is_adapter, open_factored
from updelta.io.factored import pattern_key
from updelta.metrics.factored import factored_dot, factored_fro, factored_inner, factored_singular_values


def _tiny():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32))


def _adapter(tmp_path, **lora):
    model = _tiny()
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False,
                     **lora)
    peft_model = get_peft_model(model, cfg)
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = peft_model.merge_and_unload().state_dict()
    return tmp_path / "adapter", base, merged


@pytest.mark.parametrize("lora", [{}, {"use_rslora": True}, {"rank_pattern": {"down_proj": 2},
                                                             "alpha_pattern": {"v_proj": 3}}])
def test_factors_reproduce_peft_merge(tmp_path, lora):
    path, base, merged = _adapter(tmp_path, **lora)
    assert is_adapter(path)
    with open_factored(path) as src:
        assert len(src.updates) == 2 * 3  # 2 layers x 3 modules
        for name, u in src.updates.items():
            b = torch.from_numpy(u.b.read(0, u.b.numel).copy()).reshape(u.b.shape)
            a = torch.from_numpy(u.a.read(0, u.a.numel).copy()).reshape(u.a.shape)
            dense = (merged[name] - base[name]).double()
            assert u.shape == tuple(dense.shape)
            torch.testing.assert_close(u.scale * b.double() @ a.double(), dense, atol=1e-6, rtol=1e-5)
            assert math.isclose(factored_fro(b, a, u.scale), float(dense.norm()), rel_tol=1e-6)
            assert math.isclose(factored_dot(b, a, u.scale, base[name]), float((dense * base[name].double()).sum()),
                                rel_tol=1e-6, abs_tol=1e-9)
            sv = torch.linalg.svdvals(u.scale * b.double() @ a.double())[:u.rank].numpy()
            assert max(abs(factored_singular_values(b, a, u.scale) - sv)) <= 1e-12 * sv[0]
            assert math.isclose(factored_inner(b, a, u.scale, b, a, u.scale), float(dense.norm()) ** 2,
                                rel_tol=1e-6)
        if "rank_pattern" in lora:
            assert src.updates["model.layers.0.mlp.down_proj.weight"].rank == 2
            assert src.updates["model.layers.1.self_attn.v_proj.weight"].scale == 3 / 4


def test_pattern_keys_match_as_peft_matches_them():
    from peft.utils.other import get_pattern_key

    pats = {"q_proj": 1, "layers.1.self_attn.q_proj": 2, r"layers\.\d\.mlp\..*": 3, "proj": 4}
    for module in ("model.layers.1.self_attn.q_proj", "model.layers.0.mlp.up_proj", "model.layers.0.self_attn.o_proj",
                   "lm_head", "model.layers.0.self_attn.k_proj"):
        peft_key = get_pattern_key(list(pats), module)
        assert pattern_key(pats, module) == (peft_key if peft_key in pats else None), module


def test_dora_magnitude_is_read(tmp_path):
    path, _, _ = _adapter(tmp_path, use_dora=True)
    with open_factored(path) as src:
        assert all(u.magnitude is not None and u.magnitude.shape == (u.b.shape[0],) for u in src.updates.values())


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_4", "olora", "corda", "loftq"])
def test_adapters_against_a_rewritten_base_are_refused(tmp_path, init):
    path, _, _ = _adapter(tmp_path)
    cfg = (path / "adapter_config.json").read_text().replace('"init_lora_weights": false',
                                                              f'"init_lora_weights": "{init}"')
    (path / "adapter_config.json").write_text(cfg)
    with pytest.raises(CheckpointError, match=f"init_lora_weights '{init}'") as e:
        open_factored(path)
    assert "\n" not in str(e.value)
