"""Decode token ids with a checkpoint's tokenizer (tokenizer.json, read by the `tokenizers` library).

`token_decoder(path)` returns a function id -> text for a checkpoint folder with a tokenizer.json, or None
(no tokenizer file, or the library is missing): callers then show ids. `fill_token_text(rows, path, id_key)` sets
the `token` field of table rows from their ids with it (the token rows of `Result.neurons`, `Result.lens`). Only
the tokenizer's vocabulary is used; nothing is executed from the file.
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
        from tokenizers import Tokenizer  # optional: token text only

        tok = Tokenizer.from_file(str(f))
    except Exception:  # a damaged or unsupported tokenizer file: show ids instead
        return None

    def decode(i: int) -> str:
        return tok.decode([int(i)], skip_special_tokens=False)

    return decode


def fill_token_text(rows: list[dict], path, id_key: str) -> None:
    """Set `row["token"]` to the text of token id `row[id_key]` for every row, with the tokenizer.json beside the
    checkpoint at `path`; rows are left as they are when there is none."""
    if not rows:
        return
    dec = token_decoder(path)
    if dec is None:
        return
    for r in rows:
        r["token"] = dec(r[id_key])
