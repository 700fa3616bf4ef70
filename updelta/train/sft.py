"""Supervised fine-tuning: cross-entropy on the completion tokens (and the end token) of the task's examples.

    from updelta.train import SFTOptions, sft
    result = sft.train(SFTOptions(out=Path("runs/sft"), task="target", seed=0))

Defaults (shared with DFT): 100 steps of 32 examples at peak lr 1e-4 (the paper's recipe uses 5e-5 on 1.5B+ models),
weight decay 0.01. Chosen by measurement on the committed base: at lr 3e-4 for 100 steps, or 1e-4 for 200, SFT
already reaches 100% on target_id (DFT 80-99%), which leaves nothing to compare; at 1e-4 for 100 steps neither
saturates and a run takes ~20 s on one core.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from updelta.train.batching import Batch, shuffled_batches
from updelta.train.losses import NORMALIZATIONS, Normalization, sft_loss
from updelta.train.options import OptionsError, RunOptions, check_choice, option
from updelta.train.runs import RunResult, RunWriter, Setup, finetune
from updelta.train.supervised import Objective, shifted_logits, train_supervised


@dataclass(frozen=True, kw_only=True)
class SFTOptions(RunOptions):
    steps: int | None = option("optimizer steps", 100, quick=8, real=20, real_quick=2)
    batch_size: int | None = option("examples per optimizer step, split into --grad-accum micro-batches", 32,
                                    real=8)
    grad_accum: int = option("micro-batches per optimizer step (gradient accumulation)", 2)
    lr: float | None = option("peak learning rate (AdamW betas 0.9/0.95, 10% warm-up, cosine, grad clip 1.0)",
                              1e-4, quick=1e-3, real=3e-5, real_quick=5e-5)
    weight_decay: float = option("AdamW decoupled weight decay on matrices (the DFT paper's 0.01)", 0.01)
    normalization: Normalization = option(
        "loss normalisation: global (token mean over the accumulated batch, as TRL) or microbatch "
        "(mean of per-micro-batch token means, as the official DFT code)", "global")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("normalization", self.normalization, NORMALIZATIONS)
        bad_lr = self.lr is not None and self.lr <= 0
        bad_steps = self.steps is not None and self.steps < 1
        if not 1 <= self.grad_accum <= (self.batch_size or self.grad_accum) or bad_lr or bad_steps:
            raise OptionsError("need 1 <= --grad-accum <= --batch-size, --lr > 0 and --steps >= 1")


def objective(normalization: Normalization = "global") -> Objective:
    """Cross-entropy of each micro-batch's target tokens, normalised as `normalization` says."""
    def sft_objective(model: PreTrainedModel, batch: Batch, *, num_items: int,
                      num_micro_batches: int) -> tuple[torch.Tensor, dict[str, float]]:
        logits, labels = shifted_logits(model, batch)
        loss = sft_loss(logits, labels, normalization=normalization, num_items=num_items,
                        num_micro_batches=num_micro_batches)
        return loss, {}
    return sft_objective


def train(options: SFTOptions) -> RunResult:
    """Fine-tune the base on the task by cross-entropy (SFT) and write the run folder."""
    def run(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, writer: RunWriter, setup: Setup) -> None:
        o = setup.options
        train_supervised(model, tokenizer, shuffled_batches(setup.examples, o.batch_size, o.seed),
                         objective(o.normalization), steps=o.steps, grad_accum=o.grad_accum,
                         lr=o.lr, weight_decay=o.weight_decay, on_step=writer.step)

    return finetune("sft", options, run, budget=lambda o: (o.steps, o.lr))
