"""Shared builders of small checkpoints with planted updates (used through tests/conftest.py fixtures).

Everything here writes real files with the real libraries (safetensors, torch.save,
transformers-style folders), only under the folder it is given.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file


def llama_state(layers: int = 2, hidden: int = 16, inter: int = 32, vocab: int = 40, dtype=torch.bfloat16,
                seed: int = 0, head: bool = True, prefix: str = "model.") -> dict[str, torch.Tensor]:
    """A Llama-shaped state dict with random weights (norm weights near 1)."""
    g = torch.Generator().manual_seed(seed)
    def rnd(*shape, scale=0.05):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)
    sd = {f"{prefix}embed_tokens.weight": rnd(vocab, hidden)}
    for i in range(layers):
        p = f"{prefix}layers.{i}."
        for m in ("q_proj", "k_proj", "v_proj", "o_proj"):
            sd[p + f"self_attn.{m}.weight"] = rnd(hidden, hidden)
        sd[p + "mlp.gate_proj.weight"] = rnd(inter, hidden)
        sd[p + "mlp.up_proj.weight"] = rnd(inter, hidden)
        sd[p + "mlp.down_proj.weight"] = rnd(hidden, inter)
        sd[p + "input_layernorm.weight"] = (1 + rnd(hidden, scale=0.01).float()).to(dtype)
        sd[p + "post_attention_layernorm.weight"] = (1 + rnd(hidden, scale=0.01).float()).to(dtype)
    sd[f"{prefix}norm.weight"] = (1 + rnd(hidden, scale=0.01).float()).to(dtype)
    if head:
        sd["lm_head.weight"] = rnd(vocab, hidden)
    return sd


def gpt2_state(layers: int = 2, hidden: int = 16, vocab: int = 40, dtype=torch.float32, seed: int = 0,
               prefix: str = "transformer.") -> dict[str, torch.Tensor]:
    """A GPT-2-shaped state dict: Conv1D weights stored [in, out], fused c_attn, tied head (absent)."""
    g = torch.Generator().manual_seed(seed)
    def rnd(*shape):
        return (torch.randn(*shape, generator=g) * 0.05).to(dtype)
    sd = {f"{prefix}wte.weight": rnd(vocab, hidden), f"{prefix}wpe.weight": rnd(32, hidden)}
    for i in range(layers):
        p = f"{prefix}h.{i}."
        sd[p + "ln_1.weight"] = torch.ones(hidden, dtype=dtype)
        sd[p + "ln_1.bias"] = torch.zeros(hidden, dtype=dtype)
        sd[p + "attn.c_attn.weight"] = rnd(hidden, 3 * hidden)
        sd[p + "attn.c_attn.bias"] = rnd(3 * hidden)
        sd[p + "attn.c_proj.weight"] = rnd(hidden, hidden)
        sd[p + "attn.c_proj.bias"] = rnd(hidden)
        sd[p + "ln_2.weight"] = torch.ones(hidden, dtype=dtype)
        sd[p + "ln_2.bias"] = torch.zeros(hidden, dtype=dtype)
        sd[p + "mlp.c_fc.weight"] = rnd(hidden, 4 * hidden)
        sd[p + "mlp.c_fc.bias"] = rnd(4 * hidden)
        sd[p + "mlp.c_proj.weight"] = rnd(4 * hidden, hidden)
        sd[p + "mlp.c_proj.bias"] = rnd(hidden)
    sd[f"{prefix}ln_f.weight"] = torch.ones(hidden, dtype=dtype)
    sd[f"{prefix}ln_f.bias"] = torch.zeros(hidden, dtype=dtype)
    return sd


def save(sd: dict[str, torch.Tensor], path: Path, fmt: str = "safetensors", shards: int = 1,
         config: dict | None = None) -> Path:
    """Write `sd` as a HF folder (`fmt` safetensors|bin, `shards` >= 1 with an index) or, when `path`
    has a suffix, as a single .safetensors/.bin/.pt file. Returns `path`."""
    path = Path(path)
    sd = {k: v.contiguous() for k, v in sd.items()}
    if path.suffix:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".safetensors":
            save_file(sd, str(path))
        else:
            torch.save(sd, path)
        return path
    path.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (path / "config.json").write_text(json.dumps(config))
    ext = "safetensors" if fmt == "safetensors" else "bin"
    stem = "model" if fmt == "safetensors" else "pytorch_model"
    if shards == 1:
        f = path / f"{stem}.{ext}"
        save_file(sd, str(f)) if ext == "safetensors" else torch.save(sd, f)
        return path
    names = list(sd)
    weight_map = {}
    for i in range(shards):
        part = {n: sd[n] for n in names[i::shards]}
        fname = f"{stem}-{i + 1:05d}-of-{shards:05d}.{ext}"
        save_file(part, str(path / fname)) if ext == "safetensors" else torch.save(part, path / fname)
        weight_map.update({n: fname for n in part})
    (path / f"{stem}.{ext}.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path


def perturb(sd: dict[str, torch.Tensor], frac: float = 0.3, scale: float = 1e-2, seed: int = 1,
            names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """A fine-tune: `sd` plus Gaussian noise (std `scale`) on a random `frac` of each tensor's elements."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sd.items():
        if names is not None and k not in names:
            out[k] = v.clone()
            continue
        mask = torch.rand(v.shape, generator=g) < frac
        noise = torch.randn(v.shape, generator=g) * scale
        out[k] = (v.float() + noise * mask).to(v.dtype)
    return out
