"""Where a checkpoint's map (component, module, layer, expert, heads) comes from (docs/families.md, "Structure
from transformers").

`structure(config, layers)` is the one function config.json -> `naming.Family` from transformers' classes:
1. the shipped data `updelta/families/hf/<model_type>.json`, written ahead of time from transformers' classes by
   `benchmarks/gen_families.py` (no torch, no transformers: a JSON read);
2. the on-disk cache `$UPDELTA_CACHE_DIR/structure/` (default `~/.cache/updelta/structure/`), keyed by
   model_type, a hash of the config and the transformers version;
3. a live derivation (`updelta.families.structure.derive`: torch + transformers, a skeleton on the meta device,
   a few seconds once), then cached.
`resolve(config, names)` is what `naming.resolve_family` asks: the Family (or None, and why), with where it came
from ("transformers 5.25.0 classes (shipped)", "... (cached)", "... (derived in 5.1 s, cached)").

Shipped data is used when it names every tensor of the checkpoint; a checkpoint whose config makes tensors the
default config does not have (another layer pattern, extra biases) is derived live from its own config.json.
`UPDELTA_NO_TRANSFORMERS=1` turns the live derivation off (shipped data and the family JSON only).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from functools import cache
from importlib import resources
from pathlib import Path

from updelta.atomic import write_text
from updelta.families.naming import Family, canonical, unnamed
from updelta.families.structure import StructureError, derive, refuse_reason, supported, transformers_version

ENV_OFF = "UPDELTA_NO_TRANSFORMERS"
IGNORED_KEYS = ("_name_or_path", "torch_dtype", "dtype", "transformers_version", "use_cache", "_commit_hash",
                "quantization_config", "architectures")


@cache
def shipped(model_type: str) -> dict | None:
    """The shipped family dict of `model_type` (benchmarks/gen_families.py), None when there is none."""
    if not model_type.replace("_", "").replace("-", "").isalnum():
        return None
    try:
        text = resources.files("updelta.families").joinpath("hf", f"{model_type}.json").read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):
        return None
    return json.loads(text)


def shipped_types() -> list[str]:
    """Every model_type with shipped data."""
    try:
        return sorted(p.name[:-5] for p in resources.files("updelta.families").joinpath("hf").iterdir()
                      if p.name.endswith(".json"))
    except (FileNotFoundError, OSError):
        return []


def cache_dir() -> Path:
    env = os.environ.get("UPDELTA_CACHE_DIR")
    if env:
        root = Path(env).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "updelta"
    return root / "structure"


def cache_key(config: dict, layers: int | None, version: str) -> str:
    """model_type, a hash of the config (its geometry and settings) and the layer count, transformers version."""
    body = {k: v for k, v in config.items() if k not in IGNORED_KEYS}
    h = hashlib.sha256(json.dumps([body, layers], sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{config.get('model_type')}-{h}-tf{version}"


def _uncovered(fam: Family, names) -> list[str]:
    return unnamed(fam, names)


def _as_family(d: dict, where: str) -> Family:
    return Family.from_json(d, where)


def structure(config: dict, layers: int | None = None) -> tuple[Family, str]:
    """(Family, where it came from) of checkpoint config `config` (a parsed config.json) from transformers' classes:
    the shipped data of its model_type, else the cache, else a live derivation built with `layers` blocks (the
    checkpoint's own count), cached. Raises `StructureError` with the reason when none applies (no model_type,
    auto_map, unknown to transformers, a constructor that raises, ...). The one function config -> structure."""
    why = refuse_reason(config)
    if why:
        raise StructureError(why)
    d = shipped(config["model_type"])
    if d is not None:
        return _as_family(d, f"updelta/families/hf/{config['model_type']}.json"), \
            f"transformers {d['generated']['transformers']} classes (shipped)"
    return _live(config, layers)


def _live(config: dict, layers: int | None) -> tuple[Family, str]:
    if os.environ.get(ENV_OFF):
        raise StructureError(f"{ENV_OFF} is set: no live derivation from transformers")
    version = transformers_version()
    if not supported(version):
        raise StructureError(f"transformers {version or 'is not installed'}"
                             f"{' is outside the supported range' if version else ''}")
    path = cache_dir() / f"{cache_key(config, layers, version)}.json"
    if path.exists():
        try:
            return _as_family(json.loads(path.read_text(encoding="utf-8")), str(path)), \
                f"transformers {version} classes (cached)"
        except Exception:  # noqa: BLE001, S110 - a damaged cache entry (bad JSON, not a family) is derived again
            pass
    t0 = time.perf_counter()
    d = derive(config, layers)
    spent = time.perf_counter() - t0
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(d, indent=1))
    except OSError:
        pass  # a read-only cache costs the derivation next time, nothing else
    return _as_family(d, f"transformers {version} classes"), \
        f"transformers {version} classes (derived in {spent:.1f} s, cached)"


def _layers_in(names) -> int | None:
    top = -1
    for n in names:
        m = re.search(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.", canonical(n))
        if m:
            top = max(top, int(m.group(1)))
    return top + 1 if top >= 0 else None


def resolve(config, names: list[str]) -> tuple[Family | None, str, str | None]:
    """(Family or None, where it came from or why not, a note or None) for a checkpoint with `config` and tensor
    `names`: the shipped data when it names every tensor, else a live derivation with the checkpoint's own layer
    count (cached); a derivation whose rules leave tensors unnamed is still used (those tensors are `other`,
    listed in the note)."""
    why = refuse_reason(config)
    if why:
        return None, why, None
    cfgs = [config]
    tc = config.get("text_config")
    if isinstance(tc, dict) and isinstance(tc.get("model_type"), str):
        cfgs.append(tc)
    last = ""
    for cfg in cfgs:
        mt = cfg.get("model_type")
        d = shipped(mt) if isinstance(mt, str) else None
        if d is not None:
            fam = _as_family(d, f"updelta/families/hf/{mt}.json")
            if not _uncovered(fam, names):
                return fam, f"transformers {d['generated']['transformers']} classes (shipped)", None
        try:
            fam, where = _live(cfg, _layers_in(names))
        except StructureError as e:
            last = str(e)
            if d is not None:
                missed = _uncovered(fam, names)
                return fam, f"transformers {d['generated']['transformers']} classes (shipped)", (
                    f"{len(missed)} tensors have no place in the shipped {mt} data (e.g. {missed[0]}) and a live "
                    f"derivation failed: {last}")
            continue
        missed = _uncovered(fam, names)
        note = (f"{len(missed)} tensors have no place in the {mt} classes (e.g. {missed[0]}): component other"
                if missed else None)
        return fam, where, note
    return None, last, None
