"""Turning examples into padded tensors, and the seeded order in which training sees them.

Labels follow the Hugging Face convention: `labels[b, t]` is the token at `input_ids[b, t]`, or -100 where no loss is
taken (the prompt, the <bos> token and padding); whoever computes the loss shifts by one. The completion and the final
<eos> token are trained on.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from updelta.train.tasks import Example

IGNORE = -100


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor       # [B, T] long, right-padded
    attention_mask: torch.Tensor  # [B, T] long, 1 on real tokens
    labels: torch.Tensor          # [B, T] long, IGNORE where no loss is taken

    @property
    def num_targets(self) -> int:
        """Tokens that get a loss once labels are shifted (position 0 is never a target)."""
        return int((self.labels[:, 1:] != IGNORE).sum())


def encode(example: Example, tokenizer: PreTrainedTokenizerBase, prompt_loss: bool = False) -> tuple[list, list]:
    """(ids, labels) of <bos> prompt completion <eos>; with `prompt_loss` the prompt is trained on too."""
    prompt = tokenizer(example.prompt)["input_ids"]  # starts with <bos>
    completion = tokenizer(example.completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = prompt + completion
    if prompt_loss:
        labels = [IGNORE] + ids[1:]
    else:
        labels = [IGNORE] * len(prompt) + completion
    return ids, labels


def collate(examples: Sequence[Example], tokenizer: PreTrainedTokenizerBase, prompt_loss: bool = False) -> Batch:
    """Encode and right-pad `examples` into one Batch."""
    encoded = [encode(x, tokenizer, prompt_loss) for x in examples]
    width = max(len(ids) for ids, _ in encoded)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in encoded])
    labels = torch.tensor([lab + [IGNORE] * (width - len(lab)) for _, lab in encoded])
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in encoded])
    return Batch(ids, mask, labels)


def shuffled_batches(examples: Sequence[Example], batch_size: int, seed: int) -> Iterator[list[Example]]:
    """Endless batches: each epoch is a fresh seeded permutation of `examples`, batches may straddle epochs."""
    rng = random.Random(seed)
    order: list[int] = []
    while True:
        while len(order) < batch_size:
            epoch = list(range(len(examples)))
            rng.shuffle(epoch)
            order += epoch
        yield [examples[i] for i in order[:batch_size]]
        order = order[batch_size:]


def micro_batches(examples: Sequence[Example], grad_accum: int) -> list[Sequence[Example]]:
    """Split one optimizer step's examples into `grad_accum` near-equal micro-batches."""
    size = -(-len(examples) // grad_accum)
    return [examples[i:i + size] for i in range(0, len(examples), size)]


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count only real tokens, so left- and right-padded rows see the same positions."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def until_end(completion: torch.Tensor, end_id: int) -> torch.Tensor:
    """[B, T] bool: the tokens up to and including each row's first end token (all of a row that has none)."""
    is_end = (completion == end_id).long()
    return (is_end.cumsum(-1) - is_end) == 0
