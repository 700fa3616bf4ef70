"""The second source kind: an update given as low-rank factors, D = scale * B @ A, never densified here.

A PEFT LoRA adapter folder (`adapter_config.json` + `adapter_model.safetensors` or `adapter_model.bin`) holds,
for each adapted module `M`, `base_model.model.M.lora_A.weight` (A, [r, in]) and `M.lora_B.weight` (B,
[out, r]); the update of the base weight `M.weight` is scale * B @ A with scale = lora_alpha / r, or
lora_alpha / sqrt(r) under rsLoRA (`use_rslora`), with per-module alpha and rank from `alpha_pattern` /
`rank_pattern` (docs/formats.md). Metrics take the factors (e.g. `metrics.factored.factored_fro`), so a rank-16
update of a 4096 x 4096 matrix costs O(16 * 4096) memory, not 4096^2.

DoRA (`lora_magnitude_vector`), embedding LoRA (`lora_embedding_A/B`) and other adapter types are refused by
name: their update is not a plain product of two factors.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError
from .checkpoint import TensorRef
from .formats import FileSet, open_file
from .jsonfiles import read_json

PREFIX = "base_model.model."
_FACTOR = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")


@dataclass(frozen=True)
class FactoredUpdate:
    """The update of base tensor `target`: scale * B @ A, with B [out, r] and A [r, in] read block by block."""

    target: str  # the base tensor's name without the PEFT prefix, e.g. "model.layers.0.self_attn.q_proj.weight"
    b: TensorRef
    a: TensorRef
    scale: float

    @property
    def rank(self) -> int:
        return self.a.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return (self.b.shape[0], self.a.shape[1])


class FactoredSource(FileSet):
    """A PEFT LoRA adapter: its factored updates by target tensor name, and its identity."""

    def __init__(self, path: Path, updates: dict[str, FactoredUpdate], config: dict, files: list):
        self.path, self.updates, self.config, self.files = path, updates, config, files
        self.format = "peft-lora"

    def identity(self) -> dict:
        return {"path": str(self.path), "format": self.format, "files": [{"name": f.path.name, "bytes": f.size}
                                                                         for f in self.files],
                "n_updates": len(self.updates), "ranks": sorted({u.rank for u in self.updates.values()}),
                "base_model": self.config.get("base_model_name_or_path")}



def _pattern_value(patterns: dict, module: str, default):
    """PEFT's rank_pattern / alpha_pattern: a key matches when it is the module name or its dotted suffix."""
    for key, value in (patterns or {}).items():
        if module == key or module.endswith("." + key) or re.fullmatch(key, module):
            return value
    return default


def open_factored(path: str | os.PathLike) -> FactoredSource:
    """Open a PEFT LoRA adapter folder; every factor pair is checked (shapes, ranks) before anything is read."""
    p = Path(path)
    cfg = read_json(p / "adapter_config.json")
    kind = cfg.get("peft_type")
    if kind != "LORA":
        raise CheckpointError(f"{p}: adapter type {kind!r} is not a LoRA adapter; only LoRA factors are read")
    if cfg.get("use_dora"):
        raise CheckpointError(f"{p}: a DoRA adapter (use_dora) is not a plain product of factors; merge it into "
                              f"its base and diff the merged checkpoint")
    weights = [q for q in (p / "adapter_model.safetensors", p / "adapter_model.bin") if q.is_file()]
    if not weights:
        raise CheckpointError(f"{p}: no adapter_model.safetensors or adapter_model.bin beside adapter_config.json")
    f = open_file(weights[0])
    try:
        updates = _pair_factors(p, f, cfg)
    except BaseException:
        f.close()
        raise
    return FactoredSource(p, updates, cfg, [f])


def _pair_factors(p: Path, f, cfg: dict) -> dict[str, FactoredUpdate]:
    sides: dict[str, dict[str, TensorRef]] = {}
    for name in f.names():
        if "lora_embedding" in name or "lora_magnitude" in name:
            raise CheckpointError(f"{f.path}: tensor {name} is not a plain LoRA factor (embedding LoRA or DoRA); "
                                  f"merge the adapter into its base and diff the merged checkpoint")
        m = _FACTOR.match(name)
        if m is None:
            continue  # e.g. modules_to_save copies: full tensors, not factors
        ref = TensorRef(name, f.dtype_name(name), tuple(f.shape(name)), f)
        sides.setdefault(m["module"], {})[m["which"]] = ref
    if not sides:
        raise CheckpointError(f"{f.path}: holds no lora_A/lora_B factors")
    alpha0, r0, rs = cfg.get("lora_alpha"), cfg.get("r"), bool(cfg.get("use_rslora"))
    updates = {}
    for module, ab in sides.items():
        if set(ab) != {"A", "B"}:
            raise CheckpointError(f"{f.path}: module {module} has lora_{next(iter(ab))} but not its partner")
        a, b = ab["A"], ab["B"]
        if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != b.shape[1] or not (a.is_float and b.is_float):
            raise CheckpointError(f"{f.path}: module {module}: lora_A {list(a.shape)} {a.dtype} and lora_B "
                                  f"{list(b.shape)} {b.dtype} are not float factors B [out, r] @ A [r, in]")
        target = module[len(PREFIX):] if module.startswith(PREFIX) else module
        r = a.shape[0]
        declared_r = _pattern_value(cfg.get("rank_pattern"), target, r0)
        if declared_r is not None and declared_r != r:
            raise CheckpointError(f"{f.path}: module {module} has rank {r} but adapter_config.json says {declared_r}")
        alpha = _pattern_value(cfg.get("alpha_pattern"), target, alpha0)
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or r == 0:
            raise CheckpointError(f"{p / 'adapter_config.json'}: lora_alpha {alpha!r} is not a number")
        scale = alpha / (math.sqrt(r) if rs else r)
        updates[target + ".weight"] = FactoredUpdate(target + ".weight", b, a, float(scale))
    return updates
