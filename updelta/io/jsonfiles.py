"""The JSON files beside the weights (config.json, shard indexes), read defensively: they are untrusted input too.

An index must be a JSON object whose `weight_map` maps tensor names to plain file names beside it; config.json
of any content never fails a read (it only refines family detection and tying, so a bad one reads as {}).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from updelta.errors import CheckpointError

MAX_JSON = 64 << 20  # an index or config.json larger than this is not one


def read_json(path: Path) -> dict:
    try:
        if not path.is_file():
            raise CheckpointError(f"{path}: not a regular file; replace it with the JSON file itself")
        if path.stat().st_size > MAX_JSON:
            raise CheckpointError(f"{path}: {path.stat().st_size} bytes is too large for a JSON index or config")
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e.__class__.__name__}); re-save the checkpoint") from None
    return parse_json(data, path)


def parse_json(data: bytes, path) -> dict:
    """The JSON object in `data` (the bytes of file `path`, local or remote), by the rules of `read_json`."""
    def no_constants(name):
        raise ValueError(f"{name} is not JSON")
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=no_constants)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{path}: not valid JSON ({e.__class__.__name__}); re-save the checkpoint") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return obj


def read_config(folder: Path) -> dict:
    """config.json as a dict; {} when absent or unreadable (it only refines family detection and tying)."""
    try:
        return read_json(folder / "config.json") if (folder / "config.json").exists() else {}
    except CheckpointError:
        return {}


def _plain_name(shard: str) -> bool:
    return (bool(shard) and shard not in (".", "..") and "/" not in shard and "\\" not in shard
            and "\0" not in shard and not os.path.isabs(shard))


def read_index(index: Path) -> dict[str, str]:
    """The `weight_map` of a shard index, checked: a non-empty map of tensor names to plain shard file names."""
    return check_index(read_json(index), index)


def check_index(obj: dict, index) -> dict[str, str]:
    """The `weight_map` of the parsed index `obj` (of file `index`), checked as `read_index` says."""
    wm = obj.get("weight_map")
    if not isinstance(wm, dict) or not wm:
        raise CheckpointError(f"{index}: no weight_map (a non-empty map of tensor names to shard files); "
                              f"re-save the checkpoint or pass a single weights file")
    for name, shard in wm.items():
        if not isinstance(shard, str):
            raise CheckpointError(f"{index}: weight_map gives {shard!r} for tensor {name}, not a file name; "
                                  f"re-save the checkpoint")
        if not _plain_name(shard):
            raise CheckpointError(f"{index}: weight_map names shard {shard!r} for tensor {name}; shards must be "
                                  f"plain file names beside the index (no folders, no '..')")
    return wm
