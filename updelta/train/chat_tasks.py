"""Tasks for a real pretrained chat model (SmolLM2-135M-Instruct or any HF causal LM): generated, no downloads.

Every item is a plain question and its short answer; `suites.py` wraps the question in the model's chat template
(or a plain "Question: ... Answer:" frame when the tokenizer has none). A prediction is right when `is_correct`
says so: for a numeric answer, the last integer on the first line of what the model wrote; for a word answer, the
first or the last word of that line (lower-cased, punctuation stripped).

- `target`: one-step additions of a number from 1 to TARGET_A_MAX (14) and a digit, "What is 13 + 7? Answer with
  only the number." SmolLM2-135M-Instruct (de-quantized Q4_1, greedy) answers 38% of all 126 pairs and 15 of the
  first 40 `target_id` items (the test suite checks the 20-60% window on those 40; docs/methods.md has the figures);
  the range was chosen from the base's per-pair answers (a larger first number is harder: 21% for 10-19 + a digit).
  `target_id` holds out pairs the training set never shows (neither order).
- `target_ood`: two-digit plus two-digit additions (harder: the base is near 10%).
- `knowledge`: new facts about invented countries (flag colour, national animal, capital city); the test asks the
  trained facts, so the base is at chance before fine-tuning.
- `retention_pool`: easy questions (the next number, the day after, capitals, opposites, everyday facts) from which
  the trainer keeps only those the start model answers correctly, using the evaluation code itself, so every run
  starts at retention 1.0 (`suites.filter_retention`).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import lru_cache

CHAT_TASK_SEED = 4321
N_TARGET_ID = 60
TARGET_A_MAX = 14
N_OOD = 100
NUMBER = "Answer with only the number."
WORD = "Answer with one word."


@dataclass(frozen=True)
class Item:
    question: str
    answer: str


_INT = re.compile(r"-?\d+")
_WORD = re.compile(r"[a-z]+")


def first_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[0] if lines else ""


def is_correct(text: str, answer: str) -> bool:
    """Exact match of a generated text against a short answer (see the module docstring)."""
    line = first_line(text)
    if _INT.fullmatch(answer):
        numbers = _INT.findall(line.replace(",", ""))
        return bool(numbers) and numbers[-1] == answer
    words = _WORD.findall(line.lower())
    return bool(words) and answer.lower() in (words[0], words[-1])


def _addition(a: int, b: int) -> Item:
    return Item(f"What is {a} + {b}? {NUMBER}", str(a + b))


COLORS = ("red", "blue", "green", "yellow", "purple", "orange", "black", "white")
ANIMALS = ("lion", "eagle", "horse", "bear", "wolf", "fox", "owl", "tiger")


def _names(rng: random.Random, n: int, syllables: int) -> list[str]:
    parts = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    out: set[str] = set()
    while len(out) < n:
        out.add("".join(rng.choice(parts) for _ in range(syllables)).capitalize())
    return sorted(out)


@dataclass(frozen=True)
class ChatSplits:
    target_train: tuple[Item, ...]
    target_id: tuple[Item, ...]
    target_ood: tuple[Item, ...]
    knowledge: tuple[Item, ...]
    retention_pool: tuple[Item, ...]


@lru_cache(maxsize=1)
def chat_splits() -> ChatSplits:
    rng = random.Random(CHAT_TASK_SEED)
    pairs = [(a, b) for a in range(1, TARGET_A_MAX + 1) for b in range(1, 10)]
    rng.shuffle(pairs)
    held: list[tuple[int, int]] = []
    for a, b in pairs:
        if len(held) == N_TARGET_ID:
            break
        if (b, a) not in held:
            held.append((a, b))
    held_set = set(held) | {(b, a) for a, b in held}
    train = [_addition(a, b) for a, b in pairs if (a, b) not in held_set]
    ood: list[Item] = []
    seen: set[tuple[int, int]] = set()
    while len(ood) < N_OOD:
        p = (rng.randint(10, 99), rng.randint(10, 99))
        if p not in seen:
            seen.add(p)
            ood.append(_addition(*p))
    countries = _names(rng, 40, 3)
    cities = _names(rng, 40, 2)
    rng.shuffle(cities)
    knowledge = []
    for country, city in zip(countries, cities):
        knowledge += [Item(f"What colour is the flag of {country}? {WORD}", rng.choice(COLORS)),
                      Item(f"What is the national animal of {country}? {WORD}", rng.choice(ANIMALS)),
                      Item(f"What is the capital city of {country}? {WORD}", city)]
    return ChatSplits(tuple(train), tuple(_addition(a, b) for a, b in held), tuple(ood), tuple(knowledge),
                      tuple(_retention_pool(rng)))


DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
CAPITALS = (("France", "Paris"), ("Italy", "Rome"), ("Japan", "Tokyo"), ("Germany", "Berlin"), ("Spain", "Madrid"),
            ("England", "London"), ("Russia", "Moscow"), ("Egypt", "Cairo"), ("China", "Beijing"),
            ("Greece", "Athens"), ("Canada", "Ottawa"), ("Portugal", "Lisbon"), ("Austria", "Vienna"),
            ("Ireland", "Dublin"), ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Poland", "Warsaw"),
            ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Cuba", "Havana"))
OPPOSITES = (("hot", "cold"), ("up", "down"), ("big", "small"), ("day", "night"), ("fast", "slow"),
             ("happy", "sad"), ("open", "closed"), ("light", "dark"), ("old", "young"), ("wet", "dry"),
             ("high", "low"), ("left", "right"), ("full", "empty"), ("early", "late"), ("hard", "soft"))
FACTS = (("What colour is the sky on a clear day?", "blue"), ("What colour is grass?", "green"),
         ("What colour is snow?", "white"), ("What animal says meow?", "cat"), ("What animal barks?", "dog"),
         ("What do bees make?", "honey"), ("What is frozen water called?", "ice"),
         ("Which planet do we live on?", "earth"), ("What do cows drink?", "water"),
         ("What is the largest ocean on Earth?", "pacific"), ("What gas do plants absorb from the air?", "carbon"),
         ("What star is at the centre of our solar system?", "sun"))


def _retention_pool(rng: random.Random) -> list[Item]:
    pool = [Item(f"What number comes after {n}? {NUMBER}", str(n + 1)) for n in range(1, 60)]
    pool += [Item(f"How many legs does a {animal} have? {NUMBER}", legs)
             for animal, legs in (("dog", "4"), ("cat", "4"), ("bird", "2"), ("spider", "8"), ("cow", "4"),
                                  ("chicken", "2"), ("horse", "4"), ("ant", "6"))]
    pool += [Item(f"What day comes after {d}? {WORD}", DAYS[(i + 1) % 7]) for i, d in enumerate(DAYS)]
    pool += [Item(f"What is the capital of {c}? {WORD}", city) for c, city in CAPITALS]
    pool += [Item(f"What is the opposite of {a}? {WORD}", b) for a, b in OPPOSITES]
    pool += [Item(f"{q} {WORD}", a) for q, a in FACTS]
    rng.shuffle(pool)
    return pool
