"""Which tasks a base is trained and evaluated on: the toy suite for the committed char-level base, the chat suite
for a real model, or the user's own JSONL data.

    suite = build_suite(tokenizer, data=None)     # "toy" for the char-level tokenizer, else "chat"
    suite.train["target"], suite.evals["retention"], suite.correct(text, example)

- `toy`: `tasks.py` (character format; an answer follows the last ">").
- `chat`: `chat_tasks.py`, each question wrapped in the tokenizer's chat template as one user turn (or
  "Question: ...\nAnswer:" when the tokenizer has none); retention is a pool that `filter_retention` narrows to the
  items the start model answers right, with the evaluation code itself.
- `data` (`--data FILE.jsonl`, see `data.py`): the file's records replace the target task; a seeded tenth of them
  (at least one) is held out and evaluated as `target_id`; the other splits are those of the base's suite.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from transformers import PreTrainedTokenizerBase

from updelta.train import chat_tasks, tasks
from updelta.train.data import load_data, split_held_out
from updelta.train.tasks import EVAL_SPLITS, Example

TOY_VOCAB_MAX = 256  # a tokenizer this small is the char-level one of the committed base


@dataclass(frozen=True)
class Suite:
    name: str                                  # toy | chat
    train: dict[str, tuple[Example, ...]]      # task -> training examples
    evals: dict[str, tuple[Example, ...]]      # split -> evaluation items (a prefix of `limit` is evaluated)
    correct: Callable[[str, Example], bool]    # is a generated text right for this example
    margin_tokens: int                         # generation budget beyond the longest reference completion
    retention_filtered: bool = False
    notes: dict = field(default_factory=dict)

    def eval_items(self, split: str, limit: int | None) -> list[Example]:
        return list(self.evals[split][:limit])


def profile(tokenizer: PreTrainedTokenizerBase) -> str:
    """"toy" for the committed base's char-level tokenizer, "real" for any other model's."""
    return "toy" if len(tokenizer) <= TOY_VOCAB_MAX else "real"


def chat_prompt(tokenizer: PreTrainedTokenizerBase, question: str) -> str:
    """`question` as one user turn of the tokenizer's chat template, ready for the assistant's answer."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
    return f"Question: {question}\nAnswer:"


def _toy_correct(text: str, example: Example) -> bool:
    return tasks.extract_answer(text) == example.answer


def _chat_correct(text: str, example: Example) -> bool:
    return chat_tasks.is_correct(text, example.answer)


def toy_suite() -> Suite:
    return Suite("toy", {t: tuple(tasks.train_examples(t)) for t in tasks.TASKS},
                 {s: tuple(tasks.eval_examples(s)) for s in EVAL_SPLITS}, _toy_correct, margin_tokens=4)


def chat_suite(tokenizer: PreTrainedTokenizerBase) -> Suite:
    s = chat_tasks.chat_splits()
    leading_space = not getattr(tokenizer, "chat_template", None)  # "Answer: 12" in the plain frame

    def wrap(items) -> tuple[Example, ...]:
        return tuple(Example(chat_prompt(tokenizer, x.question), (" " if leading_space else "") + x.answer,
                             x.answer) for x in items)

    return Suite("chat", {"target": wrap(s.target_train), "knowledge": wrap(s.knowledge)},
                 {"target_id": wrap(s.target_id), "target_ood": wrap(s.target_ood), "knowledge": wrap(s.knowledge),
                  "retention": wrap(s.retention_pool)}, _chat_correct, margin_tokens=10)


def build_suite(tokenizer: PreTrainedTokenizerBase, data: Path | None = None, seed: int = 0) -> Suite:
    """The suite for a model with this tokenizer; with `data`, the JSONL file replaces the target task."""
    suite = toy_suite() if profile(tokenizer) == "toy" else chat_suite(tokenizer)
    if data is None:
        return suite

    records = load_data(data, lambda q: q if suite.name == "toy" else chat_prompt(tokenizer, q), tokenizer)
    train, held = split_held_out(records)
    return replace(suite, train={**suite.train, "target": tuple(train)},
                   evals={**suite.evals, "target_id": tuple(held)},
                   notes={**suite.notes, "data": str(Path(data).resolve()), "data_train": len(train),
                          "data_held_out": len(held)})


def filter_retention(suite: Suite, keep: Callable[[list[Example]], list[bool]], n: int | None) -> Suite:
    """The suite with retention narrowed to the first `n` items the start model answers right (`keep` scores a
    list of items with the evaluation code). A no-op for the toy suite, whose retention set is fixed."""
    if suite.name == "toy":
        return suite
    kept: list[Example] = []
    pool = list(suite.evals["retention"])
    step = max(8, n or len(pool))
    for i in range(0, len(pool), step):
        chunk = pool[i:i + step]
        kept += [x for x, ok in zip(chunk, keep(chunk)) if ok]
        if n is not None and len(kept) >= n:
            break
    kept = kept[:n]
    notes = {**suite.notes, "retention_pool": len(pool), "retention_kept": len(kept)}
    return replace(suite, evals={**suite.evals, "retention": tuple(kept)}, retention_filtered=True, notes=notes)
