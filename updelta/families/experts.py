"""Mixture-of-experts tensors: one row per expert, whichever way a checkpoint stores them (docs/experts.md).

Checkpoints written by `save_pretrained` hold one 2-D tensor per expert and projection
(`mlp.experts.3.gate_proj.weight`, Mixtral's `block_sparse_moe.experts.3.w1.weight`). State dicts of
transformers 5 models in memory stack them: `mlp.experts.gate_up_proj` [E, 2I, H] (gate rows, then up
rows, per expert) and `mlp.experts.down_proj` [E, H, I]. `expand` turns every stacked tensor a
family's `stacked_experts` rules name into per-expert slices under the names the per-expert layout
uses, so either layout pairs with the other and both give the same rows and numbers. A slice is a
view: expert e's half j of a row-major [E, k*R, C] tensor is the contiguous element range starting
at (e*k + j)*R*C, read through `ExpertSlice.location` (`TensorLocation.start`). A 3-D tensor directly
under an `experts.` module that no rule names (another layout), or whose shape disagrees with its
rule's layout, is split along dim 0 only: `...experts.<e>.<name>`, one [R, C] matrix per expert.

Pure name and shape logic: nothing here opens a file.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from updelta.errors import PairingError
from updelta.families.naming import Family
from updelta.io import TensorRef

_IDX = "EXPERTINDEX"  # placeholder for the expert index while a per-expert name becomes a regex
FALLBACK = re.compile(r"^(.*\.experts)\.([A-Za-z0-9_]+)$")  # a parameter directly under `experts`


@dataclass(frozen=True)
class ExpertSlice(TensorRef):
    """A per-expert view of a stacked tensor: `name` is the stored tensor, `shape` the slice's,
    `start` the element offset of the slice in the stored tensor."""

    start: int = 0
    source: TensorRef | None = None  # the stacked tensor (a de-quantized one reads through its scales)

    @property
    def location(self):
        return replace(self.source.location if self.source is not None else super().location, start=self.start,
                       shape=tuple(self.shape))

    def read(self, start: int, count: int, out=None):
        if self.source is not None:
            return self.source.read(self.start + start, count, out)
        return self.file.read(self.name, self.start + start, count, out)


@dataclass(frozen=True)
class Split:
    """One stacked tensor split into per-expert rows."""

    stored: str  # the stored tensor's name
    shape: tuple[int, ...]
    experts: int
    names: tuple[str, ...]  # the per-expert names made, expert by expert
    first: re.Pattern  # matches the first per-expert name of any expert; group 1: the expert index

    def note(self, side: str) -> dict:
        return {"name": self.stored, "side": side, "shape": list(self.shape), "experts": self.experts,
                "rows": len(self.names)}


def _rule(name: str, family: Family, use_family: bool = True) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(match groups, per-expert name templates) of the rule that splits stored tensor `name` (`use_family`
    False: the dim-0 fallback only)."""
    for pattern, templates in family.stacked_experts if use_family else ():
        m = pattern.search(name)
        if m:
            return m.groups(), templates
    m = FALLBACK.search(name)
    if m:
        return m.groups(), ("{0}.{e}.{1}",)
    return None


def split(ref: TensorRef, family: Family,
          use_family: bool = True) -> tuple[dict[str, TensorRef], Split | None] | None:
    """The per-expert slices of stacked tensor `ref` ({name: slice}, expert-major), or None when `ref` is not
    a stacked expert tensor. Family rules with k names split dim 1 into k equal halves (gate, up); a rule
    whose name has no `{e}` renames a tensor of the in-memory expert block (Mixtral's `mlp.gate` is
    `block_sparse_moe.gate` on disk): ({new name: ref}, None)."""
    hit = _rule(ref.name, family, use_family)
    if hit is not None and "{e}" not in hit[1][0]:
        return {hit[1][0].format(*hit[0]): ref}, None
    if hit is None or len(ref.shape) not in (2, 3) or len(ref.shape) == 2 and (len(hit[1]) != 1 or not use_family
                                                                               or not family.anchored):
        return None
    groups, templates = hit
    if len(ref.shape) == 2:  # stacked per-expert biases [E, C] of a generated family (gpt-oss): one [C] per expert
        n_exp, cols = ref.shape
        out1 = {templates[0].format(*groups, e=e): ExpertSlice(ref.name, ref.dtype, (cols,), ref.file, start=e * cols,
                                                               source=ref) for e in range(n_exp)}
        first = re.compile("^" + re.escape(templates[0].format(*groups, e=_IDX)).replace(_IDX, r"(\d+)") + "$")
        return out1, Split(ref.name, tuple(ref.shape), n_exp, tuple(out1), first)
    n_exp, rows, cols = ref.shape
    k = len(templates)
    if rows % k:
        raise PairingError(f"{ref.file.path}: stacked expert tensor {ref.name} has shape {list(ref.shape)}; its "
                           f"dim 1 should hold {k} equal parts ({', '.join(t.rsplit('.', 2)[-2] for t in templates)})"
                           f": is it a stacked layout updelta does not know? see docs/experts.md")
    h = rows // k
    out: dict[str, ExpertSlice] = {}
    for e in range(n_exp):
        for j, t in enumerate(templates):
            out[t.format(*groups, e=e)] = ExpertSlice(ref.name, ref.dtype, (h, cols), ref.file,
                                                      start=(e * k + j) * h * cols, source=ref)
    first = re.compile("^" + re.escape(templates[0].format(*groups, e=_IDX)).replace(_IDX, r"(\d+)") + "$")
    return out, Split(ref.name, tuple(ref.shape), n_exp, tuple(out), first)


def expand(tensors: dict[str, TensorRef], family: Family, where) -> tuple[dict[str, TensorRef], list[Split]]:
    """`tensors` (stored name -> ref, of checkpoint `where`) with every stacked expert tensor replaced by its
    per-expert slices, in place of the stored tensor; and the splits made."""
    out: dict[str, TensorRef] = {}
    splits: list[Split] = []
    odd = _other_layouts(tensors, family)
    for name, ref in tensors.items():
        got = split(ref, family, name not in odd) if ref.is_float else None
        if got is None:
            out[name] = ref
            continue
        slices, s = got
        clash = next((n for n in slices if n in tensors), None)
        if clash is not None:
            raise PairingError(f"{where}: holds expert tensor {clash} both per expert and stacked in {name}; "
                               f"a checkpoint must hold each expert once: re-save it")
        out.update(slices)
        if s is not None:
            splits.append(s)
    return out, splits


def _other_layouts(tensors: dict[str, TensorRef], family: Family) -> set[str]:
    """Stored names a family's two-part rule (gate_up [E, 2I, H]) and one-part rule (down [E, H, I]) both match
    with the same groups but whose shapes disagree with that layout (e.g. [E, H, 2I] with interleaved gate/up
    columns): they get the dim-0 fallback instead of a wrong gate/up split."""
    by_groups: dict[tuple, dict[int, str]] = {}
    for name, ref in tensors.items():
        hit = _rule(name, family)
        if hit is not None and "{e}" in hit[1][0] and len(ref.shape) == 3 and hit[1] != ("{0}.{e}.{1}",):
            by_groups.setdefault(hit[0], {})[len(hit[1])] = name
    odd: set[str] = set()
    for parts in by_groups.values():
        if 2 in parts and 1 in parts:
            (e2, r2, c2), (e1, r1, c1) = tensors[parts[2]].shape, tensors[parts[1]].shape
            if not (e2 == e1 and c2 == r1 and r2 == 2 * c1):
                odd.update(parts.values())
    return odd


def _experts_in(names, s: Split) -> set[int]:
    return {int(m.group(1)) for m in map(s.first.match, names) if m}


def check_counts(splits: list[Split], where, other: dict[str, TensorRef], other_where) -> None:
    """Refuse a stacked tensor of `where` whose expert count differs from that of checkpoint `other_where`
    (stacked or per expert); a side without any such expert is left to the usual only-in-one-side notes."""
    for s in splits:
        got = _experts_in(other, s)
        if got and got != set(range(s.experts)):
            raise PairingError(f"{where}: stacked expert tensor {s.stored} holds {s.experts} experts but "
                               f"{other_where} has {len(got)} (e.g. {next(n for n in other if s.first.match(n))}); "
                               f"compare checkpoints of the same model")


def expand_pairing(base, runs: dict, family: Family) -> tuple[dict[str, TensorRef], dict[str, dict], list[dict]]:
    """(base tensors, {run: tensors}, notes) with stacked expert tensors split on every side, after checking
    that each stacked tensor's expert count matches the other side's."""
    btensors, bsplits = expand(base.tensors, family, base.path)
    rtensors, notes = {}, [s.note("base") for s in bsplits]
    for r, ck in runs.items():
        rt, rsplits = expand(ck.tensors, family, ck.path)
        check_counts(bsplits, base.path, rt, f"{ck.path} (run {r})")
        check_counts(rsplits, f"{ck.path} (run {r})", btensors, base.path)
        rtensors[r] = rt
        notes += [s.note(r) for s in rsplits]
    return btensors, rtensors, notes
