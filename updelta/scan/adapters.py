"""A PEFT LoRA adapter as a run: one tensor per base tensor, named as the base stores it (docs/adapters.md).

`open_run(path, base)` opens a run path: a full checkpoint as `io.open_checkpoint` does, or, for an adapter folder
(`io.formats.is_adapter`), an `AdapterRun` built against the base checkpoint. An `AdapterRun` looks like a checkpoint
to `pairing`: its `tensors` map every base tensor name to
- a `FactoredRef` (location: `FactoredLocation`) where the adapter holds factors for it (LoRA, embedding LoRA,
  DoRA, lora_bias): the per-tensor work of `scan.jobs.factored` folds the factors in;
- the adapter's own `TensorRef` where it stores a full tensor (modules_to_save, bias="all"/"lora_only"): compared
  densely against the base, like any checkpoint tensor;
- a `ZeroRef` (location kind "zero") where the adapter does not touch a float tensor: D = 0 exactly, W0 read once.
So pairing, tied heads, filters and tables work unchanged, and whole-model figures equal those of the merged model.

Adapter names (`base_model.model.` prefix) are matched to the base's by canonical name (`naming.canonical`). An
adapter tensor whose target the base lacks, or whose factors do not fit the base tensor, is a one-line error.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from updelta.errors import PairingError
from updelta.families.naming import canonical, resolve_family
from updelta.io import Checkpoint, TensorRef, open_checkpoint
from updelta.io.factored import FactoredSource, FactoredUpdate, open_factored
from updelta.io.formats import is_adapter
from updelta.io.locations import FactoredLocation, TensorLocation, is_factored  # noqa: F401 (re-exported)


class _BaseShaped:
    """What a run's tensor reference shares with the base tensor it stands for: shape and element count."""

    base: TensorRef
    is_float = True
    is_quantized = False

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.base.shape)

    @property
    def numel(self) -> int:
        return self.base.numel


@dataclass(frozen=True)
class FactoredRef(_BaseShaped):
    """A base tensor as an adapter run sees it: the base's name, shape and dtype, its update given by factors."""

    name: str
    update: FactoredUpdate
    base: TensorRef

    @property
    def dtype(self) -> str:
        return self.update.b.dtype

    @property
    def file(self):
        return self.update.b.file

    @property
    def location(self) -> FactoredLocation:
        u = self.update
        return FactoredLocation(u.kind, u.b.location, u.a.location if u.a is not None else None, float(u.scale),
                                bool(u.transposed), u.magnitude.location if u.magnitude is not None else None,
                                tuple(self.base.shape), u.b.dtype)


@dataclass(frozen=True)
class ZeroRef(_BaseShaped):
    """A base tensor the adapter does not touch: W1 = W0 (location kind "zero", no adapter bytes)."""

    name: str
    base: TensorRef

    @property
    def dtype(self) -> str:
        return self.base.dtype

    @property
    def file(self):
        return self.base.file

    @property
    def location(self) -> FactoredLocation:
        return FactoredLocation("zero", self.base.location, None, 0.0, False, None, tuple(self.base.shape),
                                self.base.dtype)


class AdapterRun:
    """An adapter folder seen as a checkpoint of the base's tensors (see the module docstring)."""

    def __init__(self, source: FactoredSource, base: Checkpoint):
        self.source, self.path, self.format = source, source.path, source.format
        self.files, self.config, self.unindexed = source.files, {}, []
        self.quantization = None  # the adapter's factors are never quantized (the base may be: io.quantized)
        bmap: dict[str, str] = {}
        for n in base.tensors:
            bmap.setdefault(canonical(n), n)
        # untouched float tensors: D = 0, W0 read once (scan.jobs.factored); the rest as the base stores them
        self.tensors: dict = {n: (ZeroRef(n, r) if r.is_float else r) for n, r in base.tensors.items()}
        self.n_factored = 0
        for target, u in source.updates.items():
            name = bmap.get(canonical(target))
            if name is None:
                raise PairingError(f"{source.path}: the adapter updates {target}, which base {base.path} does not "
                                   f"have; pass the base the adapter was trained on")
            bref = base.tensors[name]
            if not bref.is_float:
                raise PairingError(f"{source.path}: the adapter updates {name}, stored as {bref.dtype} in base "
                                   f"{base.path}; updelta folds factors into float weights only")
            if tuple(u.shape) != tuple(bref.shape):
                what = "fan_in_fan_out " if u.transposed and u.kind == "linear" else ""
                raise PairingError(f"{source.path}: the {what}factors of {target} make a {list(u.shape)} update but "
                                   f"base {base.path} stores {name} as {list(bref.shape)}; pass the matching base "
                                   f"(or fix fan_in_fan_out in adapter_config.json)")
            self.tensors[name] = FactoredRef(name, u, bref)
            self.n_factored += 1
        for target, ref in source.full.items():
            name = bmap.get(canonical(target))
            if name is None:
                if canonical(target) in _tied_heads(base):
                    self.tensors[target] = ref  # a head tied in the base, stored by the adapter: pairing compares it
                    continue
                raise PairingError(f"{source.path}: the adapter stores {target} (modules_to_save or a bias), which "
                                   f"base {base.path} does not have; pass the base the adapter was trained on")
            self.tensors[name] = ref

    def identity(self) -> dict:
        return {**self.source.identity(), "n_tensors": len(self.tensors), "n_factored": self.n_factored}

    @property
    def tie_word_embeddings(self) -> bool | None:
        return None

    def close(self) -> None:
        self.source.close()


def _tied_heads(base: Checkpoint) -> set[str]:

    return {h for h, _ in resolve_family(base.tensors, base.config).family.tied}


def open_run(path: str | os.PathLike, base: Checkpoint):
    """A run path as a checkpoint: an `AdapterRun` for an adapter folder, else `open_checkpoint(path)`."""
    if isinstance(path, str) and "://" in path:  # a remote URL (io.remote): never a local adapter folder
        return open_checkpoint(path)
    p = Path(path)
    if p.is_dir() and is_adapter(p):
        src = open_factored(p)
        try:
            return AdapterRun(src, base)
        except BaseException:
            src.close()
            raise
    return open_checkpoint(path)
