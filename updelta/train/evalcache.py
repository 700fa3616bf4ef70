"""Greedy results of a start folder, cached in the updelta cache (`evals/`), so runs that start from the same folder
do not decode the same prompts again.

    cached("before", folder, payload, compute)   # compute() once per (folder content, payload); JSON in and out

Greedy decoding is deterministic, so what a start model answers depends only on its weights and the items asked:
the key is a hash of the folder's resolved path, the names, sizes and modification times of its weight files and
config.json, and `payload` (the items, the generation budget, the suite). Used for a real base's retention filter,
its `before` accuracies and the start model's greedy answers of the forgetting check (`runs.py`). A cache that
cannot be read or written is ignored (the value is computed).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any, Callable

from updelta.atomic import write_text
from updelta.models.smollm2 import cache_dir


def folder_key(folder: Path) -> list[str]:
    """What identifies a folder's weights for the cache: its resolved path and its files' sizes and mtimes."""
    parts = [str(Path(folder).resolve())]
    for f in sorted(Path(folder).glob("*.safetensors")) + [Path(folder) / "config.json"]:
        st = f.stat()
        parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return parts


def cache_path(kind: str, folder: Path, payload: Any) -> Path:

    digest = hashlib.sha256(json.dumps([kind, folder_key(folder), payload], sort_keys=True).encode()).hexdigest()
    return cache_dir() / "evals" / f"{kind}-{digest[:24]}.json"


def cached(kind: str, folder: Path | None, payload: Any, compute: Callable[[], Any]) -> Any:
    """compute(), or its cached value for (kind, folder content, payload); no cache without a folder."""
    if folder is None:
        return compute()
    path = cache_path(kind, folder, payload)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return json.loads(path.read_text())["value"]
    value = compute()
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps({"value": value}) + "\n")
    return value
