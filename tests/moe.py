"""Tiny real mixture-of-experts checkpoints from `transformers` (built once per test session).

For each family: `per_expert/` (what `save_pretrained` writes: one 2-D tensor per expert and projection),
`stacked/` (the transformers 5 in-memory state dict: `mlp.experts.gate_up_proj` [E, 2I, H], `down_proj`
[E, H, I], with the same config.json) and `planted/` (per expert, with one planted update: expert 1 of
the first MoE layer's first projection, W1 = W0 + D, D known), plus `planted_stacked/`.
"""
from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

E = 4  # routed experts per layer
SMALL = dict(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, max_position_embeddings=64, torch_dtype="float32")
MLA = dict(n_routed_experts=E, num_experts_per_tok=2, moe_intermediate_size=8, n_shared_experts=1,
           first_k_dense_replace=1, q_lora_rank=8, kv_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=4,
           v_head_dim=4, n_group=1, topk_group=1)
# family -> (config class, kwargs, first MoE layer, name of the planted tensor with {L} and {e})
CASES = {
    "mixtral": ("MixtralConfig", dict(num_local_experts=E, num_experts_per_tok=2), 0,
                "model.layers.{L}.block_sparse_moe.experts.{e}.w1.weight"),
    "qwen2_moe": ("Qwen2MoeConfig", dict(num_experts=E, num_experts_per_tok=2, moe_intermediate_size=8,
                                         shared_expert_intermediate_size=12, decoder_sparse_step=1), 0,
                  "model.layers.{L}.mlp.experts.{e}.gate_proj.weight"),
    "qwen3_moe": ("Qwen3MoeConfig", dict(num_experts=E, num_experts_per_tok=2, moe_intermediate_size=8,
                                         decoder_sparse_step=1, head_dim=8), 0,
                  "model.layers.{L}.mlp.experts.{e}.gate_proj.weight"),
    "deepseek_v2": ("DeepseekV2Config", MLA, 1, "model.layers.{L}.mlp.experts.{e}.gate_proj.weight"),
    "deepseek_v3": ("DeepseekV3Config", MLA, 1, "model.layers.{L}.mlp.experts.{e}.gate_proj.weight"),
}
PLANT_SCALE = 0.01


@dataclass
class Built:
    family: str
    per_expert: Path
    stacked: Path
    planted: Path
    planted_stacked: Path
    layer: int  # the first MoE layer (where the update is planted)
    target: str  # the planted tensor's per-expert name
    w0: torch.Tensor  # its base value (float32)
    w1: torch.Tensor  # its planted value (float32)


_built: dict[str, Built] = {}


def _stacked_copy(folder: Path, out: Path) -> Path:
    """`folder` loaded with transformers and written as its in-memory (stacked) state dict."""
    import transformers
    from safetensors.torch import save_file

    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    out.mkdir(parents=True)
    shutil.copy(folder / "config.json", out / "config.json")
    save_file({n: t.detach().contiguous() for n, t in model.state_dict().items()}, out / "model.safetensors")
    return out


def build(case: str, tmp_path_factory) -> Built:
    """The checkpoints of `case` (see the module docstring), made once per session."""
    if case in _built:
        return _built[case]
    import transformers
    from safetensors.torch import load_file, save_file

    cls, extra, layer, target = CASES[case]
    root = tmp_path_factory.mktemp(f"moe_{case}")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = getattr(transformers, cls)(**{**SMALL, **extra})
        model = transformers.AutoModelForCausalLM.from_config(cfg)
        with torch.no_grad():  # no zero-initialised tensors (routers, biases): every rel_delta defined
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        model.save_pretrained(root / "per_expert")
        stacked = _stacked_copy(root / "per_expert", root / "stacked")
        sd = load_file(root / "per_expert" / "model.safetensors")
        name = target.format(L=layer, e=1)
        g = torch.Generator().manual_seed(1)
        w0 = sd[name].clone()
        sd[name] = (w0 + PLANT_SCALE * torch.randn(w0.shape, generator=g)).contiguous()
        (root / "planted").mkdir()
        shutil.copy(root / "per_expert" / "config.json", root / "planted" / "config.json")
        save_file(sd, root / "planted" / "model.safetensors")
        planted_stacked = _stacked_copy(root / "planted", root / "planted_stacked")
    _built[case] = Built(case, root / "per_expert", stacked, root / "planted", planted_stacked, layer, name, w0,
                         sd[name].clone())
    return _built[case]
