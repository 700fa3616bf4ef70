"""Dynamic Fine-Tuning (Wu et al., arXiv 2508.05629): SFT with each token's loss weighted by its own probability.

Same data, loop and options as SFT, plus the variants the paper and its follow-ups discuss: a probability floor,
sequence-level weighting (the paper's Table 5 ablation) and ASFT's KL anchor to the base (arXiv 2509.23753).
The log also records `ce`, the plain cross-entropy of the same batch, since the DFT loss itself is much smaller.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from updelta.train.batching import Batch, shuffled_batches
from updelta.train.losses import WEIGHTINGS, Weighting, asft_loss, dft_loss, sft_loss
from updelta.train.options import OptionsError, check_choice, option
from updelta.train.runs import RunResult, RunWriter, Setup, finetune
from updelta.train.sft import SFTOptions
from updelta.train.supervised import Objective, frozen_reference, shifted_logits, train_supervised


@dataclass(frozen=True, kw_only=True)
class DFTOptions(SFTOptions):
    prob_floor: float | None = option("raise token weights below this probability to it (off by default)", None)
    weighting: Weighting = option(
        "token (DFT), or one weight per sequence for the paper's ablation: sequence (prod p) or geometric "
        "(geometric mean of p)", "token")
    anchor_weight: float = option("ASFT: weight of a KL(base || policy) anchor per token; 0 = plain DFT", 0.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("weighting", self.weighting, WEIGHTINGS)
        if self.anchor_weight < 0 or (self.prob_floor is not None and not 0 <= self.prob_floor <= 1):
            raise OptionsError("--anchor-weight must be >= 0 and --prob-floor in [0, 1]")


def objective(options: DFTOptions, reference: PreTrainedModel | None) -> Objective:
    """The DFT objective, or ASFT when options.anchor_weight > 0 (then `reference` is the frozen base)."""
    def dft_objective(model: PreTrainedModel, batch: Batch, *, num_items: int,
                      num_micro_batches: int) -> tuple[torch.Tensor, dict[str, float]]:
        logits, labels = shifted_logits(model, batch)
        if options.anchor_weight > 0:
            with torch.no_grad():
                ref_logits, _ = shifted_logits(reference, batch)
            loss = asft_loss(logits, labels, ref_logits, anchor_weight=options.anchor_weight,
                             normalization=options.normalization, num_items=num_items,
                             num_micro_batches=num_micro_batches, prob_floor=options.prob_floor,
                             weighting=options.weighting)
        else:
            loss = dft_loss(logits, labels, normalization=options.normalization, num_items=num_items,
                            num_micro_batches=num_micro_batches, prob_floor=options.prob_floor,
                            weighting=options.weighting)
        ce = sft_loss(logits.detach(), labels, normalization=options.normalization, num_items=num_items,
                      num_micro_batches=num_micro_batches)
        return loss, {"ce": ce.item()}
    return dft_objective


def train(options: DFTOptions) -> RunResult:
    """Fine-tune the base on the task by DFT (or ASFT with --anchor-weight) and write the run folder."""
    def run(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, writer: RunWriter, setup: Setup) -> None:
        o = setup.options
        reference = frozen_reference(model) if o.anchor_weight > 0 else None
        train_supervised(model, tokenizer, shuffled_batches(setup.examples, o.batch_size, o.seed),
                         objective(o, reference), steps=o.steps, grad_accum=o.grad_accum,
                         lr=o.lr, weight_decay=o.weight_decay, on_step=writer.step)

    return finetune("dft", options, run, budget=lambda o: (o.steps, o.lr))
