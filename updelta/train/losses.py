"""Training objectives as pure functions of logits and labels.

Conventions for SFT, DFT and ASFT: `logits` is [B, T, V] and `logits[b, t]` scores `labels[b, t]` ([B, T]); the
caller shifts (`logits[:, :-1]`, `labels[:, 1:]`). `labels == -100` gets no loss (prompt and padding). Log-softmax is
taken in float32 whatever the logits' dtype.

Gradient accumulation: a function is called once per micro-batch and returns that micro-batch's share of the
accumulated batch's loss, so summing the returned values (and their gradients) over the micro-batches gives the loss
of the whole batch. `normalization` says what the share is:
  "global"     sum of this micro-batch's token losses / `num_items`, the number of target tokens in the whole
               accumulated batch (the TRL library, LLaMA-Factory, ms-swift). The default. `num_items=None` means
               this micro-batch's own count, i.e. a plain token mean.
  "microbatch" this micro-batch's token mean / `num_micro_batches` (the official DFT code, built on verl).
On one un-split batch both are the token mean; they differ when micro-batches hold different numbers of tokens.

GRPO's pieces (group advantages, the clipped per-token objective, the aggregations) follow at the end of the file.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

IGNORE = -100
Normalization = Literal["global", "microbatch"]
Weighting = Literal["token", "sequence", "geometric"]
NORMALIZATIONS: tuple[str, ...] = ("global", "microbatch")
WEIGHTINGS: tuple[str, ...] = ("token", "sequence", "geometric")


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(labels[b, t]) in float32 ([B, T], 0 where ignored) and the mask of scored tokens ([B, T] bool)."""
    mask = labels != IGNORE
    logp = F.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, labels.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
    return picked * mask, mask


def reduce_tokens(per_token: torch.Tensor, mask: torch.Tensor, normalization: Normalization = "global",
                  num_items: int | torch.Tensor | None = None, num_micro_batches: int = 1) -> torch.Tensor:
    """This micro-batch's share of the accumulated loss (see the module docstring). per_token, mask: [B, T]."""
    total = (per_token * mask).sum()
    if normalization == "global":
        count = mask.sum() if num_items is None else torch.as_tensor(num_items)
        return total / count.clamp(min=1)
    if normalization == "microbatch":
        return total / mask.sum().clamp(min=1) / num_micro_batches
    raise ValueError(f"unknown normalization {normalization!r} (choose from {', '.join(NORMALIZATIONS)})")


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, *, normalization: Normalization = "global",
             num_items: int | torch.Tensor | None = None, num_micro_batches: int = 1) -> torch.Tensor:
    """Cross-entropy of the target tokens: loss_t = -log p_t.

    logits [B, T, V], labels [B, T] -> scalar. Gradient w.r.t. logits[b, t]: (softmax - onehot(y)) / count.
    """
    logp, mask = token_logprobs(logits, labels)
    return reduce_tokens(-logp, mask, normalization, num_items, num_micro_batches)


def dft_loss(logits: torch.Tensor, labels: torch.Tensor, *, normalization: Normalization = "global",
             num_items: int | torch.Tensor | None = None, num_micro_batches: int = 1,
             prob_floor: float | None = None, weighting: Weighting = "token") -> torch.Tensor:
    """Dynamic Fine-Tuning (Wu et al., "On the Generalization of SFT: A Reinforcement Learning Perspective with
    Reward Rectification", arXiv 2508.05629): each token's cross-entropy times the model's own probability of it,
    detached, loss_t = -sg(p_t) * log p_t.

    logits [B, T, V], labels [B, T] -> scalar. Gradient w.r.t. logits[b, t]: w_t * (softmax - onehot(y)) / count.

    prob_floor: weights below it are raised to it (off by default; an early version of the paper used 0.01, the
        authors later suggested ~0.1 for models that learn nothing).
    weighting: "token" (the method), or for the paper's Table 5 ablation one weight per sequence shared by its
        tokens: "sequence" = sg(prod_t p_t), "geometric" = sg(prod_t p_t ** (1 / n_tokens)).
    """
    logp, mask = token_logprobs(logits, labels)
    if weighting == "token":
        weight = logp.detach().exp()
    elif weighting in ("sequence", "geometric"):
        seq_logp = logp.detach().sum(-1, keepdim=True)                                   # [B, 1]
        if weighting == "geometric":
            seq_logp = seq_logp / mask.sum(-1, keepdim=True).clamp(min=1)
        weight = seq_logp.exp().expand_as(logp)
    else:
        raise ValueError(f"unknown weighting {weighting!r} (choose from {', '.join(WEIGHTINGS)})")
    if prob_floor is not None:
        weight = weight.clamp(min=prob_floor)
    return reduce_tokens(-weight * logp, mask, normalization, num_items, num_micro_batches)


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token KL(reference || policy) over the vocabulary, [B, T] (0 where labels are ignored)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    ref_logp = F.log_softmax(ref_logits.float(), dim=-1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    return kl * (labels != IGNORE)


def asft_loss(logits: torch.Tensor, labels: torch.Tensor, ref_logits: torch.Tensor, *, anchor_weight: float = 0.1,
              normalization: Normalization = "global", num_items: int | torch.Tensor | None = None,
              num_micro_batches: int = 1, prob_floor: float | None = None,
              weighting: Weighting = "token") -> torch.Tensor:
    """ASFT, "Anchored Supervised Fine-Tuning" (arXiv 2509.23753): DFT plus anchor_weight * KL(reference || policy)
    per token.

    logits, ref_logits [B, T, V] (ref_logits from the frozen base, no gradient), labels [B, T] -> scalar; the KL term
    is reduced over the same tokens with the same normalization as the DFT term.
    """
    dft = dft_loss(logits, labels, normalization=normalization, num_items=num_items,
                   num_micro_batches=num_micro_batches, prob_floor=prob_floor, weighting=weighting)
    kl = kl_to_reference(logits, ref_logits.detach(), labels)
    return dft + anchor_weight * reduce_tokens(kl, labels != IGNORE, normalization, num_items, num_micro_batches)


# --- GRPO -----------------------------------------------------------------------------------------------------------
# Group Relative Policy Optimization (Shao et al., DeepSeekMath, arXiv 2402.03300), with the aggregation variants
# named as the TRL library names them: "grpo" (per-sequence token mean, then mean over sequences; length-biased),
# "bnpo" (token mean of the micro-batch), "dapo" (token sum / tokens of the whole accumulated batch; Yu et al.,
# arXiv 2503.14476; TRL 1.16's default) and "dr_grpo" (token sum / (sequences * max completion length); Liu et al.,
# "Understanding R1-Zero-Like Training", arXiv 2503.20783, used without std scaling of the advantages).

Aggregation = Literal["grpo", "bnpo", "dapo", "dr_grpo"]
AGGREGATIONS: tuple[str, ...] = ("grpo", "bnpo", "dapo", "dr_grpo")


def group_advantages(rewards: torch.Tensor, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """A_i = (r_i - mean(r)) / (std(r) + eps) within each group; without `scale`, r_i - mean(r).

    rewards [P, G] (P prompts, G completions each) -> [P, G]. std is the unbiased one, as in TRL.
    """
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale:
        return centred
    return centred / (rewards.std(dim=1, keepdim=True) + eps)


def grpo_per_token_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, *,
                        eps_low: float = 0.2, eps_high: float = 0.2, ref_logp: torch.Tensor | None = None,
                        beta: float = 0.0) -> torch.Tensor:
    """-min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A) + beta * KL_t, per token.

    logp, old_logp, ref_logp [B, T]: log-probabilities of the sampled tokens under the policy being trained, the
    policy that sampled them (no gradient) and the frozen reference; advantages [B] (one per completion).
    rho = exp(logp - old_logp); KL_t is the k3 estimator exp(ref - logp) - (ref - logp) - 1 (Schulman's).
    """
    ratio = torch.exp(logp - old_logp)
    adv = advantages.unsqueeze(-1)
    loss = -torch.min(ratio * adv, ratio.clamp(1 - eps_low, 1 + eps_high) * adv)
    if beta != 0.0:
        delta = ref_logp - logp
        loss = loss + beta * (torch.exp(delta) - delta - 1)
    return loss


def clipped_fraction(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
                     eps_low: float = 0.2, eps_high: float = 0.2) -> float:
    """Share of completion tokens whose objective is clipped (ratio outside the range on the side A pushes it)."""
    ratio = torch.exp(logp - old_logp)
    adv = advantages.unsqueeze(-1)
    clipped = ((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))
    return float((clipped & mask).sum() / mask.sum().clamp(min=1))


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, aggregation: Aggregation = "dapo", *,
              num_items: int | torch.Tensor | None = None, num_micro_batches: int = 1,
              max_completion_length: int | None = None) -> torch.Tensor:
    """This micro-batch's share of the accumulated GRPO loss. per_token, mask: [B, T] -> scalar.

    grpo: mean_b(sum_t / n_b) / num_micro_batches   bnpo: sum / n_micro / num_micro_batches
    dapo: sum / num_items (tokens of the whole accumulated batch; None = this micro-batch's)
    dr_grpo: sum / (B * max_completion_length) / num_micro_batches
    """
    mask = mask.to(per_token.dtype)
    total = (per_token * mask).sum()
    if aggregation == "grpo":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean() / num_micro_batches
    if aggregation == "bnpo":
        return total / mask.sum().clamp(min=1) / num_micro_batches
    if aggregation == "dapo":
        count = mask.sum() if num_items is None else torch.as_tensor(num_items, dtype=per_token.dtype)
        return total / count.clamp(min=1)
    if aggregation == "dr_grpo":
        length = per_token.shape[1] if max_completion_length is None else max_completion_length
        return total / (per_token.shape[0] * length) / num_micro_batches
    raise ValueError(f"unknown aggregation {aggregation!r} (choose from {', '.join(AGGREGATIONS)})")
