"""Your own training data: `updelta train sft|dft|grpo --data FILE.jsonl`.

One JSON object per line, one of:
    {"prompt": "...", "completion": "..."}              SFT/DFT target; the answer checked is the completion
    {"prompt": "...", "answer": "..."}                  GRPO (exact-match reward on `answer`); SFT trains on it
    {"prompt": "...", "completion": "...", "answer": "..."}
    {"messages": [{"role": "user", "content": "..."}, ..., {"role": "assistant", "content": "..."}]}
Blank lines are skipped. A prompt is wrapped in the base's chat template as one user turn (`messages` go through
the template whole, the last assistant turn being the completion). A seeded tenth of the records (at least one) is
held out and evaluated as `target_id`. A bad record is a one-line `DataError` naming the file and line.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable

from transformers import PreTrainedTokenizerBase

from updelta.train.options import OptionsError
from updelta.train.tasks import Example

HELD_OUT_FRACTION = 0.1
HELD_OUT_SEED = 97


class DataError(OptionsError):
    """A --data file that cannot be read as training records (one line, exit code 2)."""


def _text(d: dict, key: str, where: str) -> str:
    v = d.get(key)
    if not isinstance(v, str) or not v.strip():
        raise DataError(f"{where}: '{key}' must be a non-empty string")
    return v


def _record(d, wrap: Callable[[str], str], tokenizer: PreTrainedTokenizerBase, where: str) -> Example:
    if not isinstance(d, dict):
        raise DataError(f"{where}: a record must be a JSON object with prompt+completion, prompt+answer or messages")
    if "messages" in d:
        msgs = d["messages"]
        ok = isinstance(msgs, list) and len(msgs) >= 2 and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in msgs)
        if not ok or msgs[-1]["role"] != "assistant":
            raise DataError(f"{where}: 'messages' must be a list of {{role, content}} objects ending with an "
                            f"assistant turn")
        if not getattr(tokenizer, "chat_template", None):
            raise DataError(f"{where}: 'messages' records need a base with a chat template; use prompt+completion")
        prompt = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
        completion = msgs[-1]["content"]
        return Example(prompt, completion, completion.strip())
    prompt = _text(d, "prompt", where)
    if "completion" not in d and "answer" not in d:
        raise DataError(f"{where}: a record needs 'completion' or 'answer' beside 'prompt' (or chat 'messages')")
    completion = _text(d, "completion", where) if "completion" in d else _text(d, "answer", where)
    answer = _text(d, "answer", where) if "answer" in d else completion
    return Example(wrap(prompt), completion, answer.strip())


def load_data(path: str | Path, wrap: Callable[[str], str], tokenizer: PreTrainedTokenizerBase) -> list[Example]:
    """The records of a JSONL file as Examples (prompts wrapped by `wrap`); DataError names a bad line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"--data {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{i}"
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not JSON ({e.msg})") from None
        out.append(_record(d, wrap, tokenizer, where))
    if len(out) < 2:
        raise DataError(f"--data {path}: needs at least 2 records (one is held out for evaluation), found {len(out)}")
    return out


def split_held_out(records: list[Example]) -> tuple[list[Example], list[Example]]:
    """(train, held out): a seeded tenth (at least one record) held out, the rest in file order."""
    n = max(1, round(HELD_OUT_FRACTION * len(records)))
    held = set(random.Random(HELD_OUT_SEED).sample(range(len(records)), n))
    return ([x for i, x in enumerate(records) if i not in held], [x for i, x in enumerate(records) if i in held])
