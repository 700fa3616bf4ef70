"""Tensor-name conventions per model family, read from data files in `updelta/families/`.

Each family is one JSON file: a `detect` regex (which family a checkpoint is), a `layer`
regex (block index), ordered `modules` rules (regex whose first group is the module
name, and its component), tied head/embedding names, tensors stored transposed
(GPT-2 Conv1D is [in, out]) and buffers to ignore. Adding a family is adding a file.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Iterable


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    detect: re.Pattern | None
    layer: re.Pattern
    modules: tuple[tuple[re.Pattern, str], ...]
    tied: tuple[tuple[str, str], ...]
    transposed: tuple[re.Pattern, ...]
    ignore: tuple[re.Pattern, ...]

    @classmethod
    def from_json(cls, d: dict) -> "Family":
        return cls(
            name=d["name"],
            description=d.get("description", ""),
            detect=re.compile(d["detect"]) if d.get("detect") else None,
            layer=re.compile(d["layer"]),
            modules=tuple((re.compile(m["pattern"]), m["component"]) for m in d["modules"]),
            tied=tuple((h, e) for h, e in d.get("tied", [])),
            transposed=tuple(re.compile(p) for p in d.get("transposed", [])),
            ignore=tuple(re.compile(p) for p in d.get("ignore", [])),
        )


@dataclass(frozen=True)
class TensorName:
    """What a tensor's name says: block index, component, module and parameter kind."""

    layer: int | None
    component: str  # attn, mlp, norm, embed, head, other
    module: str
    param: str  # weight, bias (or the last name part for other parameters)


def _load(name: str) -> dict:
    return json.loads(resources.files("updelta.families").joinpath(name).read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def families() -> tuple[Family, ...]:
    """All families, the generic fallback last."""
    files = sorted(p.name for p in resources.files("updelta.families").iterdir()
                   if p.name.endswith(".json") and p.name not in ("common.json", "generic.json"))
    return tuple(Family.from_json(_load(f)) for f in files) + (Family.from_json(_load("generic.json")),)


@lru_cache(maxsize=1)
def strip_prefixes() -> tuple[str, ...]:
    return tuple(_load("common.json")["strip_prefixes"])


def detect_family(names: Iterable[str]) -> Family:
    """The first family whose `detect` pattern matches some tensor name, else the generic one."""
    names = list(names)
    for fam in families():
        if fam.detect is not None and any(fam.detect.search(n) for n in names):
            return fam
    return families()[-1]


def canonical(name: str) -> str:
    """`name` with wrapper prefixes (`module.`, `model.`, `transformer.`, ...) stripped, repeatedly."""
    changed = True
    while changed:
        changed = False
        for p in strip_prefixes():
            if name.startswith(p) and len(name) > len(p):
                name, changed = name[len(p):], True
    return name


def parse(name: str, family: Family) -> TensorName:
    """Layer, component, module and parameter kind of tensor `name` under `family`'s rules."""
    m = family.layer.search(name)
    layer = int(m.group(1)) if m else None
    last = name.rsplit(".", 1)
    param = last[1] if len(last) == 2 else "weight"
    padded = name if name.endswith(".") else name + "."
    for pattern, component in family.modules:
        mm = pattern.search(padded)
        if mm:
            return TensorName(layer, component, mm.group(1), param)
    parts = name.split(".")
    module = parts[-2] if len(parts) >= 2 else parts[0]
    return TensorName(layer, "other", module, param)


def is_transposed(name: str, family: Family) -> bool:
    """True for weights stored [in, out] (GPT-2 Conv1D): spectral work transposes them to [out, in]."""
    return any(p.search(name) for p in family.transposed)


def is_ignored(name: str, family: Family) -> bool:
    """Non-parameter buffers (causal masks, rotary caches) that are never compared."""
    return any(p.search(name) for p in family.ignore)
