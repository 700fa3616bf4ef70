"""The supervised training loop shared by pretraining, SFT and DFT: they differ only in the objective.

One optimizer step = `grad_accum` micro-batches, each run forward and backward with its share of the accumulated
loss (see `losses.py`), then gradient clipping, then AdamW at the scheduled learning rate.
"""
from __future__ import annotations

import copy
import time
from typing import Callable, Iterator, Protocol, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from updelta.train.batching import IGNORE, Batch, collate, micro_batches, position_ids
from updelta.train.optim import MAX_GRAD_NORM, build_optimizer, lr_at, set_lr
from updelta.train.tasks import Example


class Objective(Protocol):
    def __call__(self, model: PreTrainedModel, batch: Batch, *, num_items: int,
                 num_micro_batches: int) -> tuple[torch.Tensor, dict[str, float]]:
        """(this micro-batch's share of the loss, extra per-step metrics to sum over micro-batches)."""
        ...


def shifted_logits(model: PreTrainedModel, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [B, T', V], labels [B, T']) with logits[b, t] scoring labels[b, t]: the shifted columns from the
    first one that holds a target token to the end (T' <= T - 1). The model computes logits only for those
    positions (`logits_to_keep`), so on a real vocabulary the prompt's columns never become a [B, T, V] tensor;
    the losses are the same since the dropped columns carry no target."""
    labels = batch.labels[:, 1:]
    cols = (labels != IGNORE).any(0).nonzero()
    first = int(cols[0]) if len(cols) else labels.shape[1] - 1
    return logits_from(model, batch.input_ids, batch.attention_mask, first), labels[:, first:]


def logits_from(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                first: int) -> torch.Tensor:
    """Logits of input positions first .. T-2 ([B, T-1-first, V]), i.e. the scores of tokens first+1 .. T-1."""
    keep = input_ids.shape[1] - first
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                logits_to_keep=keep, use_cache=False)  # scoring only: no KV cache
    return out.logits[:, -keep:][:, :-1]


def frozen_reference(model: PreTrainedModel) -> PreTrainedModel:
    """A frozen copy of `model` for KL terms: bfloat16 on a real model (over 10M parameters, to halve its memory;
    its logits are upcast to float32 by the losses), float32 on the toy base."""
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    if sum(p.numel() for p in ref.parameters()) > 10_000_000:
        ref = ref.to(torch.bfloat16)
    return ref


def accumulate_gradients(model: PreTrainedModel, micro: Sequence[Batch], objective: Objective) -> dict[str, float]:
    """Forward and backward every micro-batch of one optimizer step, adding into `.grad`; returns summed metrics.

    The objective gets the target-token count of the whole step (`num_items`, for the global normalization) and the
    number of micro-batches (for the per-micro-batch one), so the summed gradient is that of the chosen mean.
    """
    num_items = sum(b.num_targets for b in micro)
    totals: dict[str, float] = {"loss": 0.0}
    for batch in micro:
        loss, extra = objective(model, batch, num_items=num_items, num_micro_batches=len(micro))
        loss.backward()
        totals["loss"] += loss.item()
        for key, value in extra.items():
            totals[key] = totals.get(key, 0.0) + value
    return totals


def train_supervised(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                     batches: Iterator[Sequence[Example]], objective: Objective, *, steps: int, grad_accum: int,
                     lr: float, weight_decay: float, on_step: Callable[[int, dict], None],
                     prompt_loss: bool = False) -> None:
    """Run `steps` optimizer steps over `batches`; after each, call `on_step(step, record)` (1-based step).

    record: step, loss, lr, grad_norm (before clipping), tokens_per_s (non-padding tokens), plus the objective's
    extra metrics.
    """
    model.train()
    optimizer = build_optimizer(model, lr, weight_decay)
    params = [p for p in model.parameters() if p.requires_grad]
    for step in range(steps):
        t0 = time.perf_counter()
        step_lr = lr_at(step, steps, lr)
        set_lr(optimizer, step_lr)
        micro = [collate(m, tokenizer, prompt_loss) for m in micro_batches(next(batches), grad_accum)]
        totals = accumulate_gradients(model, micro, objective)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens = sum(int(b.attention_mask.sum()) for b in micro)
        on_step(step + 1, {"step": step + 1, **totals, "lr": step_lr, "grad_norm": float(grad_norm),
                           "tokens_per_s": tokens / (time.perf_counter() - t0)})
