"""Pair the tensors of a base checkpoint with those of one or more fine-tuned ones.

Tensors are matched by canonical name (wrapper prefixes stripped, see `naming`).
Rules, in order:
- a tied output head absent from a checkpoint (it shares the embedding) is read from
  that checkpoint's embedding and flagged `tied`, never dropped silently;
- a tensor that grew only along dim 0 in the fine-tune (vocabulary resized) is compared
  on the base's rows and flagged `resized`; the norm of the added rows is reported;
- any other shape mismatch is a `PairingError` naming the tensor and both shapes
  (or, with on_shape_mismatch="skip", the tensor is left out and listed);
- tensors present on one side only, non-float tensors and family buffers (causal masks,
  rotary caches) are listed in the notes;
- stacked expert tensors are split into per-expert rows first (`experts.expand_pairing`,
  docs/experts.md), so a stacked side pairs with a per-expert one.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from updelta.errors import PairingError
from updelta.families.experts import expand_pairing
from updelta.families.heads import head_splits
from updelta.families.naming import Family, TensorName, canonical, is_ignored, is_transposed, parse, resolve_family
from updelta.io import Checkpoint, TensorRef
from updelta.io.gguf_names import align_gguf
from updelta.options import DiffOptions


@dataclass(frozen=True)
class RunSide:
    """One fine-tuned run's side of a paired tensor."""

    ref: TensorRef
    tied: bool  # read from the run's embedding because its head is absent
    added_rows: int  # rows beyond the base's (vocabulary resize), 0 otherwise


@dataclass(frozen=True)
class PairedTensor:
    """A base tensor and its counterpart in each run that has it."""

    name: str  # the base checkpoint's name (or the run's, when the base head is tied)
    key: str  # canonical name
    base: TensorRef
    base_tied: bool
    runs: dict[str, RunSide]
    info: TensorName
    transposed: bool

    @property
    def numel(self) -> int:
        return self.base.numel


@dataclass
class Pairing:
    """The pairs to compute and everything that was not paired, for the summary."""

    family: str
    tensors: list[PairedTensor]
    notes: dict = field(default_factory=dict)
    heads: dict = field(default_factory=dict)  # tensor name -> heads.HeadSplit (attention weights)


def _canonical_map(tensors: dict[str, TensorRef]) -> dict[str, str]:
    """canonical name -> stored name; falls back to stored names if stripping would collide."""
    m: dict[str, str] = {}
    for name in tensors:
        key = canonical(name)
        if key in m:
            return {n: n for n in tensors}
        m[key] = name
    return m


def _tied_source(key: str, keys: dict[str, str], family: Family) -> str | None:
    for head, embed in family.tied:
        if key == head and embed in keys:
            return embed
    return None


def filtered_out(name: str, opts: DiffOptions) -> bool:
    """Whether `--include` / `--exclude` leave tensor `name` out (the scan's and the in-memory path's one filter)."""
    if opts.include and not any(re.search(p, name) for p in opts.include):
        return True
    return any(re.search(p, name) for p in opts.exclude)


def pair_checkpoints(base: Checkpoint, runs: dict[str, Checkpoint], opts: DiffOptions) -> Pairing:
    """Pair `base` with every run in `runs` (name -> checkpoint)."""
    gguf_notes = align_gguf(base, runs)  # GGUF files under the Hugging Face side's names (docs/inputs.md, GGUF)
    match = resolve_family(base.tensors, base.config)  # config.json first, then tensor names
    family = match.family
    btensors, rtensors, split_notes = expand_pairing(base, runs, family)  # one row per expert
    bmap = _canonical_map(btensors)
    rmaps = {r: _canonical_map(t) for r, t in rtensors.items()}
    heads = {h for h, _ in family.tied}
    keys = list(bmap)
    # A head tied in the base but stored by a run: compare it against the base's embedding.
    for r, rm in rmaps.items():
        for k in rm:
            if k in heads and k not in bmap and _tied_source(k, bmap, family) and k not in keys:
                keys.append(k)

    notes: dict = {"family": family.name, "tied": [], "only_in_base": {r: [] for r in runs},
                   "only_in_run": {r: [] for r in runs}, "resized": [], "skipped_shape": [],
                   "non_float": [], "ignored": [], "filtered_out": 0, "family_source": match.source,
                   "structure": match.origin, "family_note": match.note,
                   "unindexed": {n: ck.unindexed for n, ck in (("base", base), *runs.items()) if ck.unindexed},
                   "dequantized": {n: ck.quantization for n, ck in (("base", base), *runs.items()) if ck.quantization},
                   "split_experts": split_notes, **({"gguf": gguf_notes} if gguf_notes else {})}
    pairs: list[PairedTensor] = []
    for key in keys:
        if key in bmap:
            bref, btied = btensors[bmap[key]], False
        else:
            bref, btied = btensors[bmap[_tied_source(key, bmap, family)]], True
        display = bmap.get(key) or next(rm[key] for rm in rmaps.values() if key in rm)
        if is_ignored(display, family):
            notes["ignored"].append(display)
            continue
        if filtered_out(display, opts):
            notes["filtered_out"] += 1
            continue
        _refuse_quantized(bref, base)
        if not bref.is_float:
            notes["non_float"].append(display)
            continue
        sides: dict[str, RunSide] = {}
        for r, rm in rmaps.items():
            if key in rm:
                ref, tied = rtensors[r][rm[key]], False
            else:
                src = _tied_source(key, rm, family)
                if src is None:
                    notes["only_in_base"][r].append(display)
                    continue
                ref, tied = rtensors[r][rm[src]], True
            if btied and tied:
                continue  # tied in both: the embedding row already covers it
            _refuse_quantized(ref, runs[r])
            if not ref.is_float:
                notes["non_float"].append(f"{display} ({r})")
                continue
            added = 0
            if ref.shape != bref.shape:
                grew = (len(ref.shape) == len(bref.shape) and len(ref.shape) >= 1
                        and ref.shape[0] > bref.shape[0] and ref.shape[1:] == bref.shape[1:])
                if grew:
                    added = ref.shape[0] - bref.shape[0]
                    notes["resized"].append({"name": display, "run": r, "base_shape": list(bref.shape),
                                             "ft_shape": list(ref.shape)})
                elif opts.on_shape_mismatch == "skip":
                    notes["skipped_shape"].append({"name": display, "run": r, "base_shape": list(bref.shape),
                                                   "ft_shape": list(ref.shape)})
                    continue
                else:
                    raise PairingError(
                        f"{runs[r].path}: tensor {display} has shape {list(ref.shape)} but the base "
                        f"({base.path}) has {list(bref.shape)}; only a vocabulary resize (dim 0 grown) is "
                        f"compared; pass --on-shape-mismatch skip to leave such tensors out")
            if tied or btied:
                notes["tied"].append({"name": display, "run": r,
                                      "side": "base" if btied else "finetuned",
                                      "to": bref.name if btied else ref.name})
            sides[r] = RunSide(ref, tied, added)
        if sides:
            pairs.append(PairedTensor(display, key, bref, btied, sides, parse(display, family),
                                      is_transposed(display, family)))
    for r, rm in rmaps.items():
        for k, n in rm.items():
            if k not in bmap and k not in keys:
                if not is_ignored(n, family):
                    notes["only_in_run"][r].append(n)
    # Heads tied in both checkpoints (no row of their own): say so.
    for head, embed in family.tied:
        if head not in bmap and embed in bmap and all(head not in rm for rm in rmaps.values()):
            notes["tied"].append({"name": head, "run": "*", "side": "both", "to": bmap[embed]})
    _require_compared(pairs, base, runs, notes, opts)
    heads, notes["heads"] = head_splits(family.name, base.config, pairs)  # docs/metrics.md, Where an update sits
    return Pairing(family.name, pairs, notes, heads)


def _refuse_quantized(ref: TensorRef, ck: Checkpoint) -> None:
    if ref.is_quantized:
        raise PairingError(f"{ref.file.path}: tensor {ref.name} is stored as {ref.dtype} (quantized) with no scale "
                           f"tensor beside it ({ref.name}_scale_inv); updelta does not measure quantized weights "
                           f"without their scales: compare de-quantized (bf16/fp32) checkpoints, or leave such "
                           f"tensors out with --exclude")


def _require_compared(pairs: list[PairedTensor], base: Checkpoint, runs: dict[str, Checkpoint], notes: dict,
                      opts: DiffOptions) -> None:
    """Refuse a pairing in which some run has no tensor to compare: exit 0 never means "measured nothing"."""
    for r, ck in runs.items():
        if any(r in t.runs for t in pairs):
            continue
        where = f"{ck.path} (run {r}) and base {base.path}"
        names = list(ck.tensors)
        if any("lora_A" in n or "lora_B" in n for n in names):
            why = ("the run holds LoRA factors (lora_A/lora_B) without their adapter_config.json: pass the adapter "
                   "folder (adapter_config.json beside the factors) as the run (docs/adapters.md)")
        elif notes["filtered_out"] and not notes["only_in_base"][r]:
            why = "--include/--exclude left out every tensor; loosen the patterns"
        elif any(s["run"] == r for s in notes["skipped_shape"]):
            s = next(s for s in notes["skipped_shape"] if s["run"] == r)
            why = (f"every shared tensor has a different shape (e.g. {s['name']}: {s['ft_shape']} vs base "
                   f"{s['base_shape']}): a different model? pass the base it was fine-tuned from")
        elif notes["only_in_base"][r] and notes["only_in_run"][r]:
            why = (f"no tensor name in common (base has e.g. {notes['only_in_base'][r][0]}, the run has e.g. "
                   f"{notes['only_in_run'][r][0]}): a different model or naming scheme")
        elif notes["non_float"]:
            why = "no floating-point tensor in common (integer or boolean tensors are not compared)"
        else:
            why = "no tensor in common"
        raise PairingError(f"{where}: nothing to compare: {why}")
