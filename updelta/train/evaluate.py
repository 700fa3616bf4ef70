"""Exact-match accuracy with batched greedy decoding, on the four evaluation splits.

    evaluate("runs/sft-0")  # {"target_id": 0.61, "target_ood": 0.02, "knowledge": 0.13, "retention": 0.97}

A prediction is right when the suite says so (`suites.py`): on the toy base, the answer part of the generated text
(after its last ">", see `tasks.extract_answer`) equals the example's answer exactly; on a real base, the answer
rule of `chat_tasks.is_correct`. Generation uses the model's own tokenizer, left-padded batches and stops at the
end token or after the longest reference completion of the split plus the suite's margin.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from updelta.train.model import load_model
from updelta.train.suites import Suite, build_suite
from updelta.train.tasks import EVAL_SPLITS, Example, extract_answer

MARGIN_TOKENS = 4


@torch.no_grad()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
             max_new_tokens: int | Sequence[int], temperature: float = 0.0) -> list[str]:
    """Completions of `prompts` (left-padded, KV cache); greedy when temperature == 0, else sampled.
    `max_new_tokens` may be one budget per prompt: the batch decodes to the largest and each row is cut at its own
    (the first k tokens of a completion do not depend on how many more follow)."""
    budgets = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    was_training = model.training
    model.eval()
    enc = tokenizer(list(prompts), padding=True, return_tensors="pt")
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 else \
        {"do_sample": False}
    out = model.generate(**enc, max_new_tokens=max(budgets), **sampling)
    model.train(was_training)
    width = enc["input_ids"].shape[1]
    return tokenizer.batch_decode([row[width:width + b] for row, b in zip(out, budgets)], skip_special_tokens=True)


def _toy_correct(text: str, example: Example) -> bool:
    return extract_answer(text) == example.answer


def default_batch_size(tokenizer: PreTrainedTokenizerBase) -> int:
    """256 prompts per generate call on the toy base, 32 on a real vocabulary (bounds the batch's cache)."""
    return 256 if len(tokenizer) <= 256 else 32


def budget(tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], margin_tokens: int) -> int:
    """New tokens a split's answers get: its longest reference completion plus the margin."""
    return max(len(tokenizer(x.completion, add_special_tokens=False)["input_ids"]) for x in examples) + margin_tokens


def judge(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example],
          correct: Callable[[str, Example], bool] = _toy_correct, margin_tokens: int = MARGIN_TOKENS,
          batch_size: int | None = None, budgets: Sequence[int] | None = None) -> list[bool]:
    """Per example, whether the greedy answer is right (`correct`); batches of `batch_size` (default:
    `default_batch_size`). Each answer gets `budgets[i]` new tokens, by default `budget` of all the examples."""
    if not examples:
        return []
    batch_size = batch_size or default_batch_size(tokenizer)
    budgets = list(budgets) if budgets is not None else [budget(tokenizer, examples, margin_tokens)] * len(examples)
    out: list[bool] = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        texts = generate(model, tokenizer, [x.prompt for x in chunk], budgets[i:i + batch_size])
        out += [bool(correct(t, x)) for t, x in zip(texts, chunk)]
    return out


def accuracy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example],
             batch_size: int | None = None, correct: Callable[[str, Example], bool] = _toy_correct,
             margin_tokens: int = MARGIN_TOKENS) -> float:
    """Exact-match fraction of greedy answers on `examples`."""
    if not examples:
        return 0.0
    hits = judge(model, tokenizer, examples, correct, margin_tokens, batch_size)
    return sum(hits) / len(examples)


def suite_accuracy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, suite: Suite,
                   examples: Sequence[Example]) -> float:
    return accuracy(model, tokenizer, examples, correct=suite.correct, margin_tokens=suite.margin_tokens)


def evaluate_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                   limit: int | None = None, suite: Suite | None = None) -> dict[str, float]:
    """Accuracy on each split of EVAL_SPLITS (the first `limit` items of each; all if None), on `suite` (default:
    the suite of this tokenizer, `suites.build_suite`). Whole splits that fit one batch together (`pack_splits`)
    are decoded together, each answer within its own split's budget (`budget`): on a real base with a few items per
    split the prompts' prefill, not the decoding, is the cost, and one batch of 32 costs little more than one of 8."""
    suite = suite or build_suite(tokenizer)
    items = {split: suite.eval_items(split, limit) for split in EVAL_SPLITS}
    budgets_of = {s: budget(tokenizer, v, suite.margin_tokens) for s, v in items.items() if v}
    out: dict[str, float] = {}
    for group in pack_splits({s: len(v) for s, v in items.items()}, default_batch_size(tokenizer)):
        examples = [x for split in group for x in items[split]]
        budgets = [budgets_of[s] for s in group for _ in items[s]]
        hits = judge(model, tokenizer, examples, suite.correct, suite.margin_tokens, budgets=budgets)
        i = 0
        for split in group:
            n = len(items[split])
            out[split] = sum(hits[i:i + n]) / n if n else 0.0
            i += n
    return {split: out[split] for split in EVAL_SPLITS}


def pack_splits(sizes: dict[str, int], batch_size: int) -> list[list[str]]:
    """Consecutive splits grouped while their items fit one batch; a split larger than a batch is a group alone."""
    groups: list[list[str]] = []
    room = 0
    for split, n in sizes.items():
        if groups and n <= room:
            groups[-1].append(split)
            room -= n
        else:
            groups.append([split])
            room = batch_size - n
    return groups


def evaluate(model_dir: str | Path, limit: int | None = None, suite: Suite | None = None) -> dict[str, float]:
    """Load a checkpoint folder and return its accuracy per split: target_id, target_ood, knowledge, retention."""
    model, tokenizer = load_model(model_dir)
    return evaluate_model(model, tokenizer, limit, suite)
