"""Tiny models and data of the integration tests (a module of its own: `from conftest import ...` would pick
whichever conftest.py is first on sys.path under pytest-xdist)."""
from __future__ import annotations

import torch

STEPS = (2, 4)  # measured and saved


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                        tie_word_embeddings=False))


def token_data(n: int = 32, length: int = 16, vocab: int = 64) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (length,), generator=g)
        out.append({"input_ids": ids, "labels": ids.clone()})
    return out
