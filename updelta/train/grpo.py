"""GRPO (Shao et al., arXiv 2402.03300): reinforce sampled completions that beat their group, with a rule reward.

    updelta train grpo --task target --out runs/grpo-0

One step of this trainer is one batch of rollouts:
  1. take P prompts of the task and sample G completions of each from the current policy at `temperature`;
  2. reward each completion: 1 for an exactly right answer, plus `format_reward` when it ends in ">answer";
     advantages are normalised within each group (`losses.group_advantages`);
  3. score the sampled tokens under the sampling policy (old log-probs) and under the frozen base (for the KL);
  4. take `inner_steps` AdamW steps on those rollouts, each over `grad_accum` micro-batches, with the clipped
     objective and the aggregation of `losses.grpo_per_token_loss` / `losses.aggregate`.
The log has one line per rollout batch: loss, lr, grad_norm, tokens_per_s, reward_mean, reward_std, clip_fraction,
kl (k3 to the base, mean over completion tokens) and completion_length (mean tokens, end token included).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from updelta.train.batching import IGNORE, shuffled_batches, until_end
from updelta.train.losses import (
    AGGREGATIONS,
    Aggregation,
    aggregate,
    clipped_fraction,
    group_advantages,
    grpo_per_token_loss,
    token_logprobs,
)
from updelta.train.model import activation_checkpointing, release_memory
from updelta.train.optim import MAX_GRAD_NORM, build_optimizer, lr_at, set_lr
from updelta.train.options import OptionsError, RunOptions, check_choice, option
from updelta.train.runs import RunResult, RunWriter, Setup, finetune
from updelta.train.supervised import frozen_reference, logits_from
from updelta.train.tasks import Example, extract_answer

MARGIN_TOKENS = 4


@dataclass(frozen=True, kw_only=True)
class GRPOOptions(RunOptions):
    steps: int | None = option("rollout batches (each followed by --inner-steps optimizer steps)", 40, quick=2,
                               real=6, real_quick=2)
    prompts_per_step: int | None = option("prompts per rollout batch (P)", 16, quick=4, real=4, real_quick=2)
    group_size: int | None = option("completions sampled per prompt (G)", 8, real=4)
    temperature: float = option("sampling temperature of the rollouts", 1.0)
    inner_steps: int | None = option("optimizer steps on each rollout batch (mu)", 2, real=1)
    grad_accum: int | None = option("micro-batches per optimizer step (on a real base 2 rollouts each, to bound "
                                    "the memory)", 2, real=8, real_quick=4)
    activation_checkpointing: bool | None = option("recompute each layer's activations in the backward pass (the same "
                                        "gradients, less memory, ~25% more compute)", False, real=True)
    lr: float | None = option("peak learning rate (AdamW betas 0.9/0.95, 10% warm-up, cosine, grad clip 1.0)", 2e-4,
                              real=3e-6)
    weight_decay: float = option("AdamW decoupled weight decay on matrices (TRL's GRPO default 0.0)", 0.0)
    eps_low: float = option("lower clip range of the importance ratio: clip(rho, 1 - eps_low, ...)", 0.2)
    eps_high: float = option("upper clip range: clip(rho, ..., 1 + eps_high); DAPO uses 0.28", 0.2)
    beta: float = option("weight of the k3 KL penalty to the frozen base (0 allowed; TRL and DAPO use 0)", 0.0)
    aggregation: Aggregation = option("loss aggregation: grpo, bnpo, dapo (TRL 1.16 default) or dr_grpo", "dapo")
    scale_rewards: bool | None = option(
        "divide advantages by the group's reward std (default: yes, except with --aggregation dr_grpo)", None)
    format_reward: float = option("extra reward for a completion that ends in '>' and an answer", 0.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("aggregation", self.aggregation, AGGREGATIONS)
        if self.group_size is not None and self.group_size < 2:
            raise OptionsError(f"--group-size must be at least 2, got {self.group_size}")
        if self.temperature <= 0 or (self.lr is not None and self.lr <= 0) or \
                (self.inner_steps is not None and self.inner_steps < 1) or \
                (self.grad_accum is not None and self.grad_accum < 1):
            raise OptionsError("need --temperature > 0, --lr > 0, --inner-steps >= 1 and --grad-accum >= 1")


@dataclass(frozen=True)
class Rollouts:
    input_ids: torch.Tensor       # [B, Tp + Tc] left-padded prompt, then the sampled completion
    attention_mask: torch.Tensor  # [B, Tp + Tc]
    completion_mask: torch.Tensor  # [B, Tc] bool: sampled tokens up to and including the end token
    rewards: torch.Tensor         # [B] (B = P * G, grouped by prompt)

    @property
    def prompt_width(self) -> int:
        return self.input_ids.shape[1] - self.completion_mask.shape[1]


def reward(text: str, example: Example, format_reward: float, correct: Callable[[str, Example], bool] | None = None
           ) -> float:
    """1 for the exact answer (`correct`, default the toy rule), plus `format_reward` if the text ends in '>' and
    something (the toy format)."""
    well_formed = ">" in text and extract_answer(text) != ""
    right = correct(text, example) if correct is not None else extract_answer(text) == example.answer
    return float(right) + (format_reward if well_formed else 0.0)


@torch.no_grad()
def sample_rollouts(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[Example],
                    group_size: int, temperature: float, format_reward: float,
                    correct: Callable[[str, Example], bool] | None = None,
                    margin_tokens: int = MARGIN_TOKENS) -> Rollouts:
    """G sampled completions per prompt, their masks and rewards."""
    group = [x for x in prompts for _ in range(group_size)]
    longest = max(len(tokenizer(x.completion, add_special_tokens=False)["input_ids"]) for x in prompts)
    enc = tokenizer([x.prompt for x in group], padding=True, return_tensors="pt")
    model.eval()
    out = model.generate(**enc, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                         max_new_tokens=longest + margin_tokens)
    model.train()
    completion = out[:, enc["input_ids"].shape[1]:]
    completion_mask = until_end(completion, tokenizer.eos_token_id)
    texts = tokenizer.batch_decode(completion.masked_fill(~completion_mask, tokenizer.pad_token_id),
                                   skip_special_tokens=True)
    rewards = torch.tensor([reward(t, x, format_reward, correct) for t, x in zip(texts, group)])
    attention = torch.cat([enc["attention_mask"], completion_mask.long()], dim=1)
    return Rollouts(out, attention, completion_mask, rewards)


def completion_logprobs(model: PreTrainedModel, rollouts: Rollouts, rows: slice, temperature: float) -> torch.Tensor:
    """log p(sampled token) under `model` for rows `rows`: [b, Tc], 0 outside the completion mask."""
    ids, mask = rollouts.input_ids[rows], rollouts.attention_mask[rows]
    start = rollouts.prompt_width
    logits = logits_from(model, ids, mask, start - 1)  # only the completion's columns: [b, Tc, V]
    labels = ids[:, start:].masked_fill(~rollouts.completion_mask[rows], IGNORE)
    logp, _ = token_logprobs(logits / temperature, labels)
    return logp


def row_slices(rows: int, parts: int) -> list[slice]:
    size = -(-rows // parts)
    return [slice(i, i + size) for i in range(0, rows, size)]


def policy_update(model: PreTrainedModel, reference: PreTrainedModel | None, optimizer: torch.optim.Optimizer,
                  rollouts: Rollouts, advantages: torch.Tensor, options: GRPOOptions, first_update: int,
                  total_updates: int) -> dict[str, float]:
    """`options.inner_steps` AdamW steps on one batch of rollouts; returns that batch's log metrics."""
    params = [p for p in model.parameters() if p.requires_grad]
    micro = row_slices(rollouts.rewards.numel(), options.grad_accum)
    with torch.no_grad():
        old = [completion_logprobs(model, rollouts, rows, options.temperature) for rows in micro]
        ref = [completion_logprobs(reference, rollouts, rows, options.temperature) if reference is not None
               else None for rows in micro]
    num_items = int(rollouts.completion_mask.sum())              # completion tokens of the whole batch (dapo)
    losses, clip_fractions, kls = [], [], []
    for inner in range(options.inner_steps):
        lr = lr_at(first_update + inner, total_updates, options.lr)
        set_lr(optimizer, lr)
        loss_sum = 0.0
        for rows, old_logp, ref_logp in zip(micro, old, ref):
            logp = completion_logprobs(model, rollouts, rows, options.temperature)
            mask = rollouts.completion_mask[rows]
            per_token = grpo_per_token_loss(logp, old_logp, advantages[rows], eps_low=options.eps_low,
                                            eps_high=options.eps_high, ref_logp=ref_logp, beta=options.beta)
            loss = aggregate(per_token, mask, options.aggregation, num_items=num_items,
                             num_micro_batches=len(micro), max_completion_length=mask.shape[1])
            loss.backward()
            loss_sum += loss.item()
            clip_fractions.append(clipped_fraction(logp.detach(), old_logp, advantages[rows], mask,
                                                   eps_low=options.eps_low, eps_high=options.eps_high))
            if ref_logp is not None:
                delta = (ref_logp - logp.detach())[mask]
                kls.append(float((delta.exp() - delta - 1).mean()))
        grad_norm = torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss_sum)
    return {"loss": sum(losses) / len(losses), "lr": lr, "grad_norm": float(grad_norm),
            "clip_fraction": sum(clip_fractions) / len(clip_fractions),
            **({"kl": sum(kls) / len(kls)} if kls else {})}


def train(options: GRPOOptions) -> RunResult:
    """Fine-tune the base on the task by GRPO (rule reward: exact-match answer) and write the run folder."""
    def run(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, writer: RunWriter, setup: Setup) -> None:
        options, suite = setup.options, setup.suite
        prompts = shuffled_batches(setup.examples, options.prompts_per_step, options.seed)
        scale = options.scale_rewards if options.scale_rewards is not None else options.aggregation != "dr_grpo"
        # The frozen base is needed only for the KL term; it is kept on the toy base to log the KL (k3) as well.
        keep_reference = options.beta != 0 or setup.profile == "toy"
        reference = frozen_reference(model) if keep_reference else None
        optimizer = build_optimizer(model, options.lr, options.weight_decay)
        if options.activation_checkpointing:  # train mode only: rollouts run in eval mode, with the KV cache
            activation_checkpointing(model, True)
        for step in range(options.steps):
            t0 = time.perf_counter()
            rollouts = sample_rollouts(model, tokenizer, next(prompts), options.group_size, options.temperature,
                                       options.format_reward, suite.correct, suite.margin_tokens)
            release_memory()  # the rollouts' freed cache, before the backward passes' peak
            grouped = rollouts.rewards.view(-1, options.group_size)
            advantages = group_advantages(grouped, scale=scale).flatten()
            metrics = policy_update(model, reference, optimizer, rollouts, advantages, options,
                                    step * options.inner_steps, options.steps * options.inner_steps)
            tokens = int(rollouts.attention_mask.sum()) * (options.inner_steps + 1 + keep_reference)
            writer.step(step + 1, {
                "step": step + 1, **metrics, "tokens_per_s": tokens / (time.perf_counter() - t0),
                "reward_mean": float(rollouts.rewards.mean()), "reward_std": float(rollouts.rewards.std()),
                "completion_length": float(rollouts.completion_mask.sum(-1).float().mean()),
                "signal": bool((grouped.std(dim=1) > 0).any())})
        if options.activation_checkpointing:
            activation_checkpointing(model, False)

    return finetune("grpo", options, run, budget=lambda o: (o.steps * o.inner_steps, o.lr))
