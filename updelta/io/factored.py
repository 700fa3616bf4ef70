"""The second source kind: an update given as low-rank factors, D = scale * B @ A, never densified here.

A PEFT LoRA adapter folder (`adapter_config.json` + `adapter_model.safetensors` or `adapter_model.bin`) holds, for
each adapted module `M` (names with PEFT's `base_model.model.` prefix; docs/adapters.md):
- `M.lora_A.weight` (A, [r, in]) and `M.lora_B.weight` (B, [out, r]): the update of `M.weight` is
  scale * B @ A, transposed when `fan_in_fan_out` (GPT-2 Conv1D weights are stored [in, out]);
- `M.lora_embedding_A` ([r, vocab]) and `M.lora_embedding_B` ([hidden, r]): embedding LoRA, D = scale * (B A)^T;
- `M.lora_magnitude_vector` ([out]): DoRA's magnitude m (`use_dora`);
- `M.lora_B.bias` (`lora_bias`): the update of `M.bias` is scale * that vector;
- full tensors, which replace the base's: `modules_to_save` copies (`M.weight`) and, with `bias="all"` or
  `"lora_only"`, biases (`M.bias`, `M.base_layer.bias`).
scale = lora_alpha / r (lora_alpha / sqrt(r) with `use_rslora`), per-module rank and alpha from `rank_pattern` /
`alpha_pattern`, matched as PEFT matches them (`pattern_key`).

Adapters whose factors are only meaningful against a rewritten base (`init_lora_weights` pissa, olora, corda, loftq,
lora_ga) and adapter types other than plain LoRA are refused by name, in one line.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from updelta.errors import CheckpointError
from updelta.io.checkpoint import TensorRef
from updelta.io.formats import FileSet, open_file
from updelta.io.jsonfiles import read_json

PREFIX = "base_model.model."
_FACTOR = re.compile(r"^(?P<module>.+)\.lora_(?P<which>A|B|embedding_A|embedding_B|magnitude_vector)"
                     r"(?:\.(?P<adapter>(?!weight$|bias$)[^.]+))?(?P<suffix>\.weight|\.bias)?$")
# init_lora_weights values that rewrite the base weights (W0 - B0 A0 is stored back): D against the original base
# would be wrong.
REWRITTEN_BASE = ("pissa", "olora", "corda", "loftq", "lora_ga")
# LoRA variants whose update is not (scaled) B @ A, refused by config key when set.
VARIANT_KEYS = ("use_bdlora", "alora_invocation_tokens", "velora_config", "monteclora_config", "mica",
                "kasa_config", "arrow_config", "trainable_token_indices", "layer_replication", "target_parameters",
                "use_qalora", "lora_ga_config", "corda_config", "loftq_config_applied")


@dataclass(frozen=True)
class FactoredUpdate:
    """The update of base tensor `target` given by factors: scale * B @ A (transposed when `transposed`).

    kind "linear": B [out, r], A [r, in]; stored D = s B A, or (s B A)^T with fan_in_fan_out;
    kind "embedding": B = lora_embedding_B [hidden, r], A = lora_embedding_A [r, vocab], stored D = s (B A)^T;
    `magnitude` (DoRA's m, [out]) makes W1 = m * (W0 + D) / ||W0 + D|| per output row;
    kind "bias": `b` is lora_B.bias [out], `a` is None; stored D = s b."""

    target: str  # the base tensor's name without the PEFT prefix, e.g. "model.layers.0.self_attn.q_proj.weight"
    b: TensorRef
    a: TensorRef | None
    scale: float
    kind: str = "linear"
    transposed: bool = False
    magnitude: TensorRef | None = None

    @property
    def rank(self) -> int:
        return self.a.shape[0] if self.a is not None else 1

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the update as the base stores it."""
        if self.a is None:
            return tuple(self.b.shape)
        rows, cols = self.b.shape[0], self.a.shape[1]
        return (cols, rows) if self.transposed else (rows, cols)


class FactoredSource(FileSet):
    """A PEFT LoRA adapter: its factored updates and its full tensors by target name, and its identity."""

    def __init__(self, path: Path, updates: dict[str, FactoredUpdate], config: dict, files: list,
                 full: dict[str, TensorRef] | None = None):
        self.path, self.updates, self.config, self.files = path, updates, config, files
        self.full = full or {}
        self.format = "peft-lora"

    def identity(self) -> dict:
        return {"path": str(self.path), "format": self.format, "files": [{"name": f.path.name, "bytes": f.size}
                                                                         for f in self.files],
                "bytes": sum(f.size for f in self.files), "n_updates": len(self.updates),
                "n_full": len(self.full), "ranks": sorted({u.rank for u in self.updates.values() if u.a is not None}),
                "dora": any(u.magnitude is not None for u in self.updates.values()),
                "base_model": self.config.get("base_model_name_or_path")}


def pattern_key(patterns, module: str) -> str | None:
    """PEFT's `get_pattern_key`: the first key, in insertion order, for which `(.*\\.)?(key)$` matches the module
    name from its start (re.match); None when none does."""
    for key in patterns or {}:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return None


def _pattern_value(patterns: dict, module: str, default):
    key = pattern_key(patterns, module)
    return default if key is None else patterns[key]


def _strip(name: str) -> str:
    return name[len(PREFIX):] if name.startswith(PREFIX) else name


def check_config(p: Path, cfg: dict) -> None:
    """Refuse, by name, what this reader does not measure correctly."""
    kind = cfg.get("peft_type")
    where = p / "adapter_config.json"
    if kind != "LORA":
        raise CheckpointError(f"{where}: peft_type {kind!r} is not implemented (only LORA adapters are read); merge "
                              f"the adapter into its base (merge_and_unload) and diff the merged checkpoint")
    init = cfg.get("init_lora_weights")
    if isinstance(init, str) and any(init.lower().startswith(k) for k in REWRITTEN_BASE):
        raise CheckpointError(f"{where}: init_lora_weights {init!r} rewrites the base weights, so the update against "
                              f"the original base is not B @ A; diff the merged checkpoint instead")
    for k in VARIANT_KEYS:
        if cfg.get(k):
            raise CheckpointError(f"{where}: {k} is set: this LoRA variant's update is not read; merge the adapter "
                                  f"into its base and diff the merged checkpoint")


def open_factored(path: str | os.PathLike) -> FactoredSource:
    """Open a PEFT LoRA adapter folder; every factor pair is checked (shapes, ranks) before anything is read."""
    p = Path(path)
    cfg = read_json(p / "adapter_config.json")
    check_config(p, cfg)
    weights = [q for q in (p / "adapter_model.safetensors", p / "adapter_model.bin") if q.is_file()]
    if not weights:
        raise CheckpointError(f"{p}: no adapter_model.safetensors or adapter_model.bin beside adapter_config.json")
    f = open_file(weights[0])
    try:
        updates, full = _pair_factors(p, f, cfg)
    except BaseException:
        f.close()
        raise
    return FactoredSource(p, updates, cfg, [f], full)


def _scale(f, module: str, target: str, r: int, cfg: dict, where: Path) -> float:
    declared_r = _pattern_value(cfg.get("rank_pattern"), target, cfg.get("r"))
    if declared_r is not None and declared_r != r:
        raise CheckpointError(f"{f.path}: module {module} has rank {r} but adapter_config.json says {declared_r}; "
                              f"the factors do not belong to this config")
    alpha = _pattern_value(cfg.get("alpha_pattern"), target, cfg.get("lora_alpha"))
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or r <= 0:
        raise CheckpointError(f"{where}: lora_alpha {alpha!r} for {target} is not a number")
    return float(alpha / (math.sqrt(r) if cfg.get("use_rslora") else r))


def _pair_factors(p: Path, f, cfg: dict) -> tuple[dict[str, FactoredUpdate], dict[str, TensorRef]]:
    sides: dict[str, dict[str, TensorRef]] = {}
    full: dict[str, TensorRef] = {}
    for name in f.names():
        ref = TensorRef(name, f.dtype_name(name), tuple(f.shape(name)), f)
        m = _FACTOR.match(name)
        if m is None:
            # modules_to_save copies and bias="all"/"lora_only" biases: full tensors that replace the base's;
            # a targeted module's bias is stored as M.base_layer.bias; embedding LoRA's saved base layer
            # (save_embedding_layers) is the base's own weight, which the factors sit on
            target = _strip(name).replace(".base_layer.", ".")
            if ".base_layer." in name and name.endswith(".weight"):
                continue
            full[target] = ref
            continue
        which = m["which"] + ("_bias" if m["suffix"] == ".bias" else "")
        sides.setdefault(m["module"], {})[which] = ref
    if not sides and not full:
        raise CheckpointError(f"{f.path}: holds no lora_A/lora_B factors")
    where = p / "adapter_config.json"
    updates: dict[str, FactoredUpdate] = {}
    for module, ab in sides.items():
        target = _strip(module)
        mag = ab.get("magnitude_vector")
        if "embedding_A" in ab or "embedding_B" in ab:
            a, b, kind, transposed = ab.get("embedding_A"), ab.get("embedding_B"), "embedding", True
            if mag is not None:
                raise CheckpointError(f"{f.path}: module {module}: DoRA on an embedding is not implemented; merge "
                                      f"the adapter into its base and diff the merged checkpoint")
            pa, pb = "lora_embedding_A", "lora_embedding_B"
        else:
            a, b, kind, transposed = ab.get("A"), ab.get("B"), "linear", bool(cfg.get("fan_in_fan_out"))
            pa, pb = "lora_A", "lora_B"
        if a is None or b is None:
            have = pa if a is not None else pb
            raise CheckpointError(f"{f.path}: module {module} has {have} but not its partner "
                                  f"{pb if a is not None else pa}")
        if len(a.shape) != 2 or len(b.shape) != 2 or not (a.is_float and b.is_float):
            raise CheckpointError(f"{f.path}: module {module}: {pa} {list(a.shape)} {a.dtype} and {pb} "
                                  f"{list(b.shape)} {b.dtype} are not 2-D float factors (conv LoRA is not read)")
        if a.shape[0] != b.shape[1]:
            raise CheckpointError(f"{f.path}: module {module}: {pa} has rank {a.shape[0]} ({list(a.shape)}) but "
                                  f"{pb} has rank {b.shape[1]} ({list(b.shape)}); the factors do not match")
        scale = _scale(f, module, target, a.shape[0], cfg, where)
        if mag is not None and (len(mag.shape) != 1 or mag.shape[0] != b.shape[0] or not mag.is_float):
            raise CheckpointError(f"{f.path}: module {module}: lora_magnitude_vector {list(mag.shape)} does not "
                                  f"match lora_B {list(b.shape)}")
        updates[target + ".weight"] = FactoredUpdate(target + ".weight", b, a, scale, kind, transposed, mag)
        bias = ab.get("B_bias")
        if bias is not None:
            if mag is not None:
                raise CheckpointError(f"{f.path}: module {module}: lora_bias with DoRA is not implemented")
            if len(bias.shape) != 1 or bias.shape[0] != b.shape[0] or not bias.is_float:
                raise CheckpointError(f"{f.path}: module {module}: lora_B.bias {list(bias.shape)} does not match "
                                      f"lora_B {list(b.shape)}")
            updates[target + ".bias"] = FactoredUpdate(target + ".bias", bias, None, scale, "bias")
    for name in full:
        if name in updates:
            raise CheckpointError(f"{f.path}: {name} is stored both as a full tensor and as factors")
    return updates, full
