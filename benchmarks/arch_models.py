"""Tiny models of every causal-LM architecture the installed transformers knows (the sweep's inputs).

`build(model_type, root)` shrinks the architecture's default config (2 layers, hidden 64, 4 heads, 4 experts,
vocab 512), builds the model on CPU with seeded weights, and saves `root/<model_type>/base` (save_pretrained)
and `root/<model_type>/run` (every floating tensor perturbed by a seeded 1e-2 noise). Results are cached on
disk: a model already saved is not rebuilt. Used by benchmarks/bench_arch_sweep.py and
tests/families/test_structure_sweep.py. Needs torch and transformers.
"""
from __future__ import annotations

import json
import shutil
import traceback
from pathlib import Path

MAX_PARAMS = 40_000_000

SMALL = {
    "num_hidden_layers": 2, "n_layer": 2, "n_layers": 2, "num_layers": 2, "decoder_layers": 2,
    "encoder_layers": 2, "num_decoder_layers": 2,
    "hidden_size": 64, "n_embd": 64, "d_model": 64, "dim": 64, "n_embed": 64,
    "num_attention_heads": 4, "n_head": 4, "n_heads": 4, "num_heads": 4, "decoder_attention_heads": 4,
    "encoder_attention_heads": 4,
    "num_key_value_heads": 2, "num_kv_heads": 2, "n_head_kv": 2, "multi_query_group_num": 2,
    "head_dim": 16, "kv_channels": 16,
    "intermediate_size": 128, "ffn_dim": 128, "n_inner": 128, "decoder_ffn_dim": 128, "encoder_ffn_dim": 128,
    "ffn_hidden_size": 128, "d_ff": 128,
    "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32, "expert_intermediate_size": 32,
    "num_local_experts": 4, "num_experts": 4, "n_routed_experts": 4, "moe_num_experts": 4,
    "num_experts_per_tok": 2, "moe_topk": 2, "top_k": 2, "moe_k": 2, "n_group": 1, "topk_group": 1,
    "vocab_size": 512, "max_position_embeddings": 128, "n_positions": 128,
}


PATTERN_KEYS = ("layer_types", "layers_block_type", "hybrid_override_pattern", "block_types", "mlp_layer_types",
                "attn_layer_indices", "layers_types")
TOKEN_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "sep_token_id",
              "cls_token_id", "mask_token_id", "unk_token_id")


def _shrink_dict(d: dict, layers: int = 2) -> None:
    d.pop("per_layer_config", None)
    layers0 = next((d[k] for k in ("num_hidden_layers", "n_layer", "num_layers") if isinstance(d.get(k), int)), None)
    for k, v in SMALL.items():
        cur = d.get(k)
        if isinstance(cur, int) and not isinstance(cur, bool):
            d[k] = min(cur, v) if k in ("num_key_value_heads", "num_kv_heads") and cur else v
            if v == 2 and k in LAYER_KEYS:
                d[k] = min(cur, layers) if layers != 2 else 2
    if isinstance(d.get("num_key_value_heads"), int) and isinstance(d.get("num_attention_heads"), int):
        if d["num_key_value_heads"] <= 0 or d["num_attention_heads"] % d["num_key_value_heads"]:
            d["num_key_value_heads"] = d["num_attention_heads"]
    n = None
    for k in PATTERN_KEYS:
        cur = d.get(k)
        if isinstance(cur, (list, str)) and len(cur) > 2 and k != "attn_layer_indices":
            kinds = list(dict.fromkeys(cur))  # every kind of layer once, then the pattern's own start
            keep = (kinds + list(cur))[: max(layers, len(kinds))] if layers == 2 else list(cur)[:layers]
            keep = keep if set(keep) >= set(kinds) else (kinds + list(cur))[: max(layers, len(kinds))]
            d[k] = "".join(keep) if isinstance(cur, str) else keep
            n = max(n or 0, len(keep))
    if n is not None:
        for k in ("num_hidden_layers", "n_layer", "n_layers", "num_layers"):
            if isinstance(d.get(k), int):
                d[k] = n
    n_now = next((d[k] for k in ("num_hidden_layers", "n_layer", "num_layers") if isinstance(d.get(k), int)), None)
    for k, v in d.items():  # other per-layer lists (one value per layer)
        if isinstance(v, list) and layers0 and len(v) == layers0 and k not in PATTERN_KEYS and n_now:
            d[k] = v[:n_now]
    if isinstance(d.get("attn_layer_indices"), list):
        d["attn_layer_indices"] = [1]
    vocab = d.get("vocab_size")
    for k in TOKEN_KEYS:
        v = d.get(k)
        if isinstance(vocab, int) and isinstance(v, int) and v >= vocab:
            d[k] = vocab - 1
        elif isinstance(vocab, int) and isinstance(v, list):
            d[k] = [min(x, vocab - 1) if isinstance(x, int) else x for x in v]
    for k, v in d.items():
        if isinstance(v, dict):
            _shrink_dict(v, layers)


LAYER_KEYS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers", "decoder_layers", "encoder_layers",
              "num_decoder_layers")


def shrink(cfg, layers: int = 2):
    """A shrunk copy of config object `cfg`: every nested config's sizes set small (keys it does not have are left
    alone), layer patterns cut to each kind of layer once."""
    d = cfg.to_dict()
    _shrink_dict(d, layers)
    return type(cfg).from_dict(d)


def causal_lm_types() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def build(model_type: str, root: Path) -> dict:
    """{"ok": bool, "why": ..., "dir": path} for one architecture (cached under root/model_type)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out = Path(root) / model_type
    status = out / "status.json"
    if status.exists():
        return json.loads(status.read_text())
    res = {"model_type": model_type, "ok": False, "dir": str(out)}
    try:
        cfg = shrink(AutoConfig.for_model(model_type))
        with torch.device("meta"):  # size first: a config the shrink missed must not fill the machine's memory
            n = sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())
        if n > MAX_PARAMS:
            raise RuntimeError(f"shrunk model still has {n} parameters (limit {MAX_PARAMS})")
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg)
        model.eval()
        if out.exists():
            shutil.rmtree(out)
        model.save_pretrained(out / "base")
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                if p.is_floating_point():
                    p.add_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * 1e-2)
        model.save_pretrained(out / "run")
        res.update(ok=True, cls=type(model).__name__,
                   params=sum(p.numel() for p in model.parameters()))
    except Exception as e:  # the sweep lists what does not build, and why
        res["why"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        res["trace"] = traceback.format_exc()[-1500:]
    out.mkdir(parents=True, exist_ok=True)
    status.write_text(json.dumps(res))
    return res
