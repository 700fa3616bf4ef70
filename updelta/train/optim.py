"""AdamW with the DFT paper's settings, and its learning-rate schedule.

Defaults follow Wu et al. (arXiv 2508.05629): betas (0.9, 0.95), a cosine schedule after a 10% linear warm-up, and
gradient clipping at norm 1.0 (done by the training loop). Weight decay is decoupled (AdamW) and, as in the Hugging
Face Trainer, skips biases and normalisation weights; every other element decays a little at every step.
"""
from __future__ import annotations

import math

import torch
from torch import nn

BETAS = (0.9, 0.95)
WARMUP_FRACTION = 0.1
MAX_GRAD_NORM = 1.0


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters: matrices decay, 1-D tensors (norm weights, biases) do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=BETAS)


def lr_at(step: int, total_steps: int, peak_lr: float, warmup_fraction: float = WARMUP_FRACTION) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warm-up to `peak_lr`, then cosine decay to 0."""
    warmup = max(1, math.ceil(warmup_fraction * total_steps))
    if step < warmup:
        return peak_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
