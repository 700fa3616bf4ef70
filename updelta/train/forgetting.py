"""Forgetting beside geometry (RL's Razor, Shenfeld et al. 2025): the forward KL between the start policy and the
fine-tuned one on the new task's inputs, E_x KL(pi_0 || pi) per token.

    answers = greedy_answers(start_model, tokenizer, prompts, max_new_tokens)   # token ids, end token included
    forward_kl(start_model, run_model, tokenizer, prompts, max_new_tokens)      # or answers=answers
        -> {"kl_per_token", "prompts", "tokens"}

For each prompt the start model writes its greedy answer (up to and including its end token; the trainer caches
these per start folder, `evalcache.py`); both models are then teacher-forced on prompt + that answer, and at every
answer position the KL over the whole vocabulary, sum_v p_0(v) (log p_0(v) - log p(v)), is taken in float32 and
averaged over all answer tokens of all prompts. Both models compute in float32 (the same model gives exactly 0).
Rows are scored a few at a time and only the answer's columns get logits (`supervised.logits_from`), so no
[batch x length x vocabulary] tensor of the whole batch exists.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from updelta.train.batching import until_end
from updelta.train.supervised import logits_from


@torch.no_grad()
def greedy_answers(start: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                   max_new_tokens: int) -> list[list[int]]:
    """The start model's greedy answer to each prompt as token ids, up to and including its first end token (all
    `max_new_tokens` of a row that has none)."""
    start.eval()
    enc = tokenizer(list(prompts), padding=True, return_tensors="pt")
    out = start.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens)
    completion = out[:, enc["input_ids"].shape[1]:]
    mask = until_end(completion, tokenizer.eos_token_id)
    return [row[m].tolist() for row, m in zip(completion, mask)]


@torch.no_grad()
def forward_kl(start: PreTrainedModel, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
               prompts: Sequence[str], max_new_tokens: int = 0, rows_per_chunk: int = 8,
               answers: Sequence[Sequence[int]] | None = None) -> dict[str, float | int]:
    """E_x KL(pi_0 || pi) per answer token (see the module docstring); `answers` defaults to
    `greedy_answers(start, tokenizer, prompts, max_new_tokens)`."""
    if answers is None:
        answers = greedy_answers(start, tokenizer, prompts, max_new_tokens)
    start.eval()
    model.eval()
    enc = tokenizer(list(prompts), padding=True, return_tensors="pt")
    width = enc["input_ids"].shape[1]
    longest = max(len(a) for a in answers)
    completion = torch.full((len(answers), longest), tokenizer.pad_token_id, dtype=enc["input_ids"].dtype)
    completion_mask = torch.zeros((len(answers), longest), dtype=torch.bool)
    for i, a in enumerate(answers):
        completion[i, :len(a)] = torch.tensor(a, dtype=completion.dtype)
        completion_mask[i, :len(a)] = True
    ids = torch.cat([enc["input_ids"], completion], dim=1)
    attention = torch.cat([enc["attention_mask"], completion_mask.long()], dim=1)
    total, tokens = 0.0, 0
    for i in range(0, ids.shape[0], rows_per_chunk):
        rows = slice(i, i + rows_per_chunk)
        lp0 = F.log_softmax(logits_from(start, ids[rows], attention[rows], width - 1).float(), dim=-1)
        lp = F.log_softmax(logits_from(model, ids[rows], attention[rows], width - 1).float(), dim=-1)
        kl = (lp0.exp() * (lp0 - lp)).sum(-1)                   # [b, Tc]
        mask = completion_mask[rows]
        total += float(kl[mask].double().sum())
        tokens += int(mask.sum())
    return {"kl_per_token": total / tokens if tokens else 0.0, "prompts": len(prompts), "tokens": tokens}
