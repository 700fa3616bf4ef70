"""Deterministic synthetic tasks: a pretraining mixture that gives the base a prior, and the fine-tuning tasks.

Every item is an `Example(prompt, completion, answer)`. The model reads `prompt`, writes `completion` and then its
end token; exact-match compares `answer` with the text after the last ">" of what the model wrote (or all of it).

- Addition with a written-out procedure, one step per digit from the right with the carry written in:
      prompt "347+285="   completion "7+5=12,4+8+1=13,3+2+1=6>632"   answer "632"
- Facts about synthetic entities (2-syllable names), three attributes with eight values each:
      prompt "color of kavo?"   completion "red"   answer "red"

Splits (fixed: they do not depend on a run's seed, so every run of every method sees the same data):
- `pretrain`: an endless stream (seeded) mixing facts about the pretraining entities with additions of 1-2 digit
  operands and, rarely, 3- and 4-digit ones: the rare long ones give the base partial competence on the target.
- `target_train` / `target_id`: 3-digit additions (disjoint); `target_ood`: 4-digit additions (longer, one step
  more; absent from the fine-tuning set and rare in pretraining, so the base is near 0 on them).
- `knowledge_train` / `knowledge`: facts about NEW entities that pretraining never mentions; the test asks the
  same facts (memorisation), so the base is at chance (~1/8) before fine-tuning.
- `retention`: held-out 1-2 digit additions plus questions about pretraining facts (what fine-tuning should keep).
The evaluation items are excluded from the pretraining stream and from `target_train`.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Literal

from updelta.atomic import write_text

Task = Literal["target", "knowledge"]
TASKS: tuple[str, ...] = ("target", "knowledge")
EVAL_SPLITS: tuple[str, ...] = ("target_id", "target_ood", "knowledge", "retention")

TASK_SEED = 1234              # fixes every split; unrelated to the seeds of training runs
FACT_FRACTION = 0.4           # share of facts in the pretraining stream
THREE_DIGIT_FRACTION = 0.03   # share of 3-digit additions among the pretraining additions (tuned: base ~50%)
FOUR_DIGIT_FRACTION = 0.01    # and of 4-digit ones
N_PRETRAIN_ENTITIES = 120
N_NEW_ENTITIES = 50
N_EXTRA_NEW_ENTITIES = 20     # more new entities, drawn after the others (separate rng): 70 x 3 = 210 knowledge facts
EXTRA_SEED = TASK_SEED + 1    # their rng, so that every other split (and the committed base) stays as it was
N_TARGET_TRAIN = 4000
N_EVAL = 200                  # items per evaluation split (knowledge: all (N_NEW_ENTITIES + N_EXTRA_NEW_ENTITIES) * 3
                              # = 210 facts: at least 200 per split, docs/claims.md)

ATTRIBUTES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("color", ("red", "blue", "green", "gold", "pink", "gray", "black", "white")),
    ("food", ("rice", "fish", "corn", "bread", "plum", "soup", "cake", "beans")),
    ("home", ("lake", "hill", "cave", "farm", "city", "port", "wood", "dune")),
)


@dataclass(frozen=True)
class Example:
    prompt: str
    completion: str
    answer: str


def extract_answer(text: str) -> str:
    """The answer part of a completion: what follows its last ">" (all of it if there is none), stripped."""
    return text.rsplit(">", 1)[-1].strip()


# --- addition -----------------------------------------------------------------------------------------------------

def addition(a: int, b: int) -> Example:
    """'a+b=' and its procedure: per digit from the right 'x+y=s' (after a carry 'x+y+1=s'), then '>' and the sum."""
    da, db = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        steps.append(f"{x}+{y}+1={s}" if carry else f"{x}+{y}={s}")
        carry = s // 10
    return Example(f"{a}+{b}=", ",".join(steps) + f">{a + b}", str(a + b))


def _operand(rng: random.Random, digits: int) -> int:
    return rng.randrange(10 ** (digits - 1) if digits > 1 else 0, 10 ** digits)


def _distinct_pairs(rng: random.Random, digits: tuple[int, int], n: int, exclude: set) -> list[tuple[int, int]]:
    pairs: list[tuple[int, int]] = []
    seen = set(exclude)
    while len(pairs) < n:
        pair = (_operand(rng, rng.randint(*digits)), _operand(rng, rng.randint(*digits)))
        if pair not in seen:
            seen.add(pair)
            pairs.append(pair)
    return pairs


# --- facts --------------------------------------------------------------------------------------------------------

def _entity_names(rng: random.Random, n: int) -> list[str]:
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    names = sorted({a + b for a in syllables for b in syllables})
    return rng.sample(names, n)


def _facts(rng: random.Random, names: list[str]) -> list[Example]:
    facts = []
    for name in names:
        for attribute, values in ATTRIBUTES:
            value = rng.choice(values)
            facts.append(Example(f"{attribute} of {name}?", value, value))
    return facts


# --- the fixed splits ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Splits:
    pretrain_facts: tuple[Example, ...]
    retention: tuple[Example, ...]
    target_train: tuple[Example, ...]
    target_id: tuple[Example, ...]
    target_ood: tuple[Example, ...]
    knowledge: tuple[Example, ...]
    held_out: frozenset  # addition pairs the pretraining stream must not show


@lru_cache(maxsize=1)
def _splits() -> _Splits:
    rng = random.Random(TASK_SEED)
    names = _entity_names(rng, N_PRETRAIN_ENTITIES + N_NEW_ENTITIES)
    pretrain_facts = _facts(rng, names[:N_PRETRAIN_ENTITIES])
    knowledge = _facts(rng, names[N_PRETRAIN_ENTITIES:])
    extra_rng = random.Random(EXTRA_SEED)
    extra = [n for n in _entity_names(extra_rng, 4 * N_EXTRA_NEW_ENTITIES) if n not in set(names)]
    knowledge += _facts(extra_rng, extra[:N_EXTRA_NEW_ENTITIES])
    short = _distinct_pairs(rng, (1, 2), N_EVAL // 2, set())
    target_id = _distinct_pairs(rng, (3, 3), N_EVAL, set())
    target_ood = _distinct_pairs(rng, (4, 4), N_EVAL, set())
    target_train = _distinct_pairs(rng, (3, 3), N_TARGET_TRAIN, set(target_id))
    retention = [addition(*p) for p in short] + rng.sample(pretrain_facts, N_EVAL - len(short))
    return _Splits(
        pretrain_facts=tuple(pretrain_facts), retention=tuple(retention),
        target_train=tuple(addition(*p) for p in target_train), target_id=tuple(addition(*p) for p in target_id),
        target_ood=tuple(addition(*p) for p in target_ood), knowledge=tuple(knowledge),
        held_out=frozenset(short) | frozenset(target_id) | frozenset(target_ood))


def train_examples(task: Task) -> list[Example]:
    """The fine-tuning set of `task`: 'target' (3-digit additions) or 'knowledge' (facts about new entities)."""
    s = _splits()
    if task == "target":
        return list(s.target_train)
    if task == "knowledge":
        return list(s.knowledge)
    raise ValueError(f"unknown task {task!r} (choose from {', '.join(TASKS)})")


def eval_examples(split: str, limit: int | None = None) -> list[Example]:
    """The first `limit` items (all if None) of an evaluation split: one of EVAL_SPLITS."""
    if split not in EVAL_SPLITS:
        raise ValueError(f"unknown evaluation split {split!r} (choose from {', '.join(EVAL_SPLITS)})")
    items = list(getattr(_splits(), split))
    if split == "retention":  # interleave additions and facts so a prefix keeps both kinds
        half = N_EVAL // 2
        items = [x for pair in zip(items[:half], items[half:]) for x in pair]
    return items[:limit]


def pretrain_stream(seed: int) -> Iterator[Example]:
    """The endless pretraining mixture: facts (FACT_FRACTION) and additions, evaluation items left out."""
    s = _splits()
    rng = random.Random(seed)
    while True:
        if rng.random() < FACT_FRACTION:
            yield rng.choice(s.pretrain_facts)
            continue
        u = rng.random()
        if u < FOUR_DIGIT_FRACTION:
            pair = (_operand(rng, 4), _operand(rng, 4))
        elif u < FOUR_DIGIT_FRACTION + THREE_DIGIT_FRACTION:
            pair = (_operand(rng, 3), _operand(rng, 3))
        else:
            pair = (_operand(rng, rng.randint(1, 2)), _operand(rng, rng.randint(1, 2)))
        if pair not in s.held_out:
            yield addition(*pair)


# --- committed samples -----------------------------------------------------------------------------------------------

def write_samples(folder: str | Path, n: int = 20) -> list[Path]:
    """Write the first `n` items of every split to `folder/SPLIT.jsonl` (the committed `data/` samples)."""
    stream = pretrain_stream(seed=0)
    splits = {
        "pretrain": [next(stream) for _ in range(n)],
        "target_train": train_examples("target")[:n],
        "knowledge_train": train_examples("knowledge")[:n],
        **{name: eval_examples(name, n) for name in EVAL_SPLITS},
    }
    paths = []
    for name, items in splits.items():
        path = Path(folder) / f"{name}.jsonl"
        write_text(path, "".join(json.dumps(asdict(x)) + "\n" for x in items))
        paths.append(path)
    return paths

