"""Exact-match accuracy with batched greedy decoding, on the four evaluation splits.

    evaluate("runs/sft-0")  # {"target_id": 0.61, "target_ood": 0.02, "knowledge": 0.13, "retention": 0.97}

A prediction is right when the answer part of the generated text (after its last ">", see `tasks.extract_answer`)
equals the example's answer exactly. Generation stops at the end token or after the longest reference completion
of the split plus a small margin.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .model import load_model
from .tasks import EVAL_SPLITS, Example, eval_examples, extract_answer

MARGIN_TOKENS = 4


@torch.no_grad()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
             max_new_tokens: int, temperature: float = 0.0) -> list[str]:
    """Completions of `prompts` (left-padded, KV cache); greedy when temperature == 0, else sampled."""
    was_training = model.training
    model.eval()
    enc = tokenizer(list(prompts), padding=True, return_tensors="pt")
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 else \
        {"do_sample": False}
    out = model.generate(**enc, max_new_tokens=max_new_tokens, **sampling)
    model.train(was_training)
    return tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def accuracy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example],
             batch_size: int = 256) -> float:
    """Exact-match fraction of greedy answers on `examples`."""
    if not examples:
        return 0.0
    longest = max(len(tokenizer(x.completion, add_special_tokens=False)["input_ids"]) for x in examples)
    correct = 0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        texts = generate(model, tokenizer, [x.prompt for x in chunk], longest + MARGIN_TOKENS)
        correct += sum(extract_answer(t) == x.answer for t, x in zip(texts, chunk))
    return correct / len(examples)


def evaluate_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                   limit: int | None = None) -> dict[str, float]:
    """Accuracy on each split of EVAL_SPLITS (the first `limit` items of each; all if None)."""
    return {split: accuracy(model, tokenizer, eval_examples(split, limit)) for split in EVAL_SPLITS}


def evaluate(model_dir: str | Path, limit: int | None = None) -> dict[str, float]:
    """Load a checkpoint folder and return its accuracy per split: target_id, target_ood, knowledge, retention."""
    model, tokenizer = load_model(model_dir)
    return evaluate_model(model, tokenizer, limit)
