"""Forgetting beside geometry (RL's Razor, Shenfeld et al. 2025): the forward KL between the start policy and the
fine-tuned one on the new task's inputs, E_x KL(pi_0 || pi) per token.

    forward_kl(start_model, run_model, tokenizer, prompts, max_new_tokens) -> {"kl_per_token", "prompts", "tokens"}

For each prompt the start model writes its greedy answer (up to and including its end token); both models are then
teacher-forced on prompt + that answer, and at every answer position the KL over the whole vocabulary,
sum_v p_0(v) (log p_0(v) - log p(v)), is taken in float32 and averaged over all answer tokens of all prompts.
On a real model the trainer holds the start model in bfloat16 (its stored weights, upcast logits), to keep
three models within the memory of training. Rows are scored a few at a time and only the answer's columns get logits (`supervised.logits_from`), so no
[batch x length x vocabulary] tensor of the whole batch exists.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .batching import until_end
from .supervised import logits_from


@torch.no_grad()
def forward_kl(start: PreTrainedModel, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
               prompts: Sequence[str], max_new_tokens: int, rows_per_chunk: int = 8) -> dict[str, float | int]:
    start.eval()
    model.eval()
    enc = tokenizer(list(prompts), padding=True, return_tensors="pt")
    out = start.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens)
    width = enc["input_ids"].shape[1]
    completion_mask = until_end(out[:, width:], tokenizer.eos_token_id)
    attention = torch.cat([enc["attention_mask"], completion_mask.long()], dim=1)
    total, tokens = 0.0, 0
    for i in range(0, out.shape[0], rows_per_chunk):
        rows = slice(i, i + rows_per_chunk)
        lp0 = F.log_softmax(logits_from(start, out[rows], attention[rows], width - 1).float(), dim=-1)
        lp = F.log_softmax(logits_from(model, out[rows], attention[rows], width - 1).float(), dim=-1)
        kl = (lp0.exp() * (lp0 - lp)).sum(-1)                   # [b, Tc]
        mask = completion_mask[rows]
        total += float(kl[mask].double().sum())
        tokens += int(mask.sum())
    return {"kl_per_token": total / tokens if tokens else 0.0, "prompts": len(prompts), "tokens": tokens}
