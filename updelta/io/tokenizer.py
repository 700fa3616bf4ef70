"""Decode token ids with a checkpoint's tokenizer (tokenizer.json, read by the `tokenizers` library).

`token_decoder(path)` returns a function id -> text for a checkpoint folder with a tokenizer.json, or None
(no tokenizer file, or the library is missing): callers then show ids. Only the tokenizer's vocabulary is
used; nothing is executed from the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable


def token_decoder(path) -> Callable[[int], str] | None:
    p = Path(path)
    f = p / "tokenizer.json" if p.is_dir() else p.parent / "tokenizer.json"
    if not f.is_file():
        return None
    try:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(f))
    except Exception:  # a damaged or unsupported tokenizer file: show ids instead
        return None

    def decode(i: int) -> str:
        return tok.decode([int(i)], skip_special_tokens=False)

    return decode
