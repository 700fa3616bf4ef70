"""Tensor-name conventions per model family, read from data files in `updelta/families/`.

Each family is one JSON file (see docs/formats.md, "Family detection"):
- `architectures`, `model_types`: the config.json values it covers ("Phi3ForCausalLM", "phi3");
- `priority` and `detect`: when config.json names no known family, families are tried by tensor
  names in descending priority (most specific first: phi3 before llama, whose pattern also
  matches Phi-3's o_proj), the first whose `detect` regex matches some name wins, else `generic`;
- `layer`: regex whose first group is the block index;
- `modules`: ordered rules; a rule's regex is searched in the name (with a trailing "."), its
  first group is the module name (or `module`, a format string over the groups, e.g.
  "experts.{0}"), `component` one of `components()`, `param` overrides the parameter kind
  (for stacked-expert tensors whose names have no ".weight");
- `module_order`: the family's modules in forward order (for plots);
- `tied`: (head, embedding) canonical names of an output head that may share the embedding;
- `transposed`: weights stored [in, out] (GPT-2 Conv1D); `ignore`: buffers never compared;
- `expert` (optional): regex whose first group is the routed expert's index (`TensorName.expert`);
  `stacked_experts` (optional): how stacked 3-D expert tensors split into per-expert rows (docs/experts.md,
  read by `updelta.families.experts`).
Adding a family is adding a file.

Towers (`common.json` "towers", docs/families.md): a multimodal checkpoint's vision encoder and projector
(`vision_tower.`, `multi_modal_projector.`, ...). A name a tower's `match` regex finds is read with that tower's
own `layer` and `modules` rules and gets `TensorName.tower` ("vision", "projector"); every other name is the text
model's (tower None). Tower names never take part in family detection.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources
from typing import Iterable

from updelta.errors import UpdeltaError

GENERIC = "generic"


@dataclass(frozen=True)
class Rule:
    """One module rule: where it matches, the component, and how module and parameter are named."""

    pattern: re.Pattern
    component: str
    module: str | None = None  # format string over the match groups; None: group 1
    param: str | None = None  # parameter kind to report; None: the name's last part


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    priority: int
    architectures: tuple[str, ...]
    model_types: tuple[str, ...]
    detect: re.Pattern | None
    layer: re.Pattern
    modules: tuple[Rule, ...]
    module_order: tuple[str, ...]
    tied: tuple[tuple[str, str], ...]
    transposed: tuple[re.Pattern, ...]
    ignore: tuple[re.Pattern, ...]
    expert: re.Pattern | None = None
    stacked_experts: tuple[tuple[re.Pattern, tuple[str, ...]], ...] = ()  # (stored-name regex, per-expert names)
    anchored: bool = False  # rules full-match the canonical name (families generated from transformers' classes)
    qkv_layout: dict | None = None  # attention-head layout (read by `updelta.families.heads`)
    lens: dict | None = None  # logit-lens data (read by `updelta.scan.jobs.lens`)
    generated: dict | None = None  # {"transformers": version, ...}: derived from transformers' classes

    @classmethod
    def from_json(cls, d: dict, source: str = "<family>") -> "Family":
        try:
            rules = []
            for m in d["modules"]:
                if m["component"] not in components():
                    raise ValueError(f"component {m['component']!r} is not one of {', '.join(components())}")
                rules.append(Rule(re.compile(m["pattern"]), m["component"], m.get("module"), m.get("param")))
            return cls(
                name=d["name"],
                description=d.get("description", ""),
                priority=int(d.get("priority", 0)),
                architectures=tuple(d.get("architectures", [])),
                model_types=tuple(d.get("model_types", [])),
                detect=re.compile(d["detect"]) if d.get("detect") else None,
                layer=re.compile(d["layer"]),
                modules=tuple(rules),
                module_order=tuple(d.get("module_order", [])),
                tied=tuple((h, e) for h, e in d.get("tied", [])),
                transposed=tuple(re.compile(p) for p in d.get("transposed", [])),
                ignore=tuple(re.compile(p) for p in d.get("ignore", [])),
                expert=re.compile(d["expert"]) if d.get("expert") else None,
                stacked_experts=tuple((re.compile(r["pattern"]), tuple(r["as"]))
                                      for r in d.get("stacked_experts", [])),
                anchored=bool(d.get("anchored", False)),
                qkv_layout=d["qkv_layout"] if isinstance(d.get("qkv_layout"), dict) else None,
                lens=d["lens"] if isinstance(d.get("lens"), dict) else None,
                generated=d["generated"] if isinstance(d.get("generated"), dict) else None,
            )
        except (KeyError, TypeError, ValueError, re.error) as e:
            raise UpdeltaError(f"{source}: not a valid family file ({e.__class__.__name__}: {e}); "
                               f"see docs/formats.md, Family detection") from None


@dataclass(frozen=True)
class TensorName:
    """What a tensor's name says: block index, component, module and parameter kind."""

    layer: int | None
    component: str  # one of components(): embed, attn, ssm, router, mlp, norm, head, other
    module: str
    param: str  # weight, bias (or the last name part for other parameters)
    tower: str | None = None  # None: the text model; "vision", "projector": see `towers()`
    expert: int | None = None  # routed expert index (family `expert` regex); None for shared experts and the rest


@dataclass(frozen=True)
class FamilyMatch:
    """A detected family and how it was found (`source`, recorded in the pairing notes)."""

    family: Family
    source: str  # "config.json architectures" | "config.json model_type" | "config.json text_config.<key>" |
    #              "tensor names" | "fallback"
    claimed: str | None = None  # the config.json value that named the family (or was set aside, see `rejected`)
    rejected: str | None = None  # family config.json named but the tensor names contradict
    structure: str | None = None  # "transformers <version> classes (...)"; None: the family JSON
    note: str | None = None  # why the map is less than certain (pairing notes["family_note"])

    @property
    def origin(self) -> str:
        """Where the map came from: "transformers <version> classes (...)" or "family JSON <name>"."""
        return self.structure or f"family JSON {self.family.name}"


@dataclass(frozen=True)
class Tower:
    """A non-text part of a multimodal checkpoint: names `match` finds are parsed with `rules` (a Family)."""

    name: str
    match: re.Pattern
    rules: Family


def _load(name: str) -> dict:
    return json.loads(resources.files("updelta.families").joinpath(name).read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def _common() -> dict:
    return _load("common.json")


@lru_cache(maxsize=1)
def components() -> tuple[str, ...]:
    """Every component a tensor can get, in forward order (embed, attn, ssm, router, mlp, norm, head, other)."""
    return tuple(_common()["components"])


@lru_cache(maxsize=1)
def strip_prefixes() -> tuple[str, ...]:
    return tuple(_common()["strip_prefixes"])


@lru_cache(maxsize=1)
def towers() -> tuple[Tower, ...]:
    """The towers of common.json, in matching order (the first whose `match` finds the name wins)."""
    out = []
    for d in _common().get("towers", []):
        try:
            match = re.compile(d["match"])
        except (KeyError, TypeError, re.error) as e:
            raise UpdeltaError(f"updelta/families/common.json: not a valid tower ({e.__class__.__name__}: {e}); "
                               f"see docs/families.md") from None
        out.append(Tower(d.get("tower", "?"), match, Family.from_json({**d, "name": d.get("tower", "?")},
                                                                      "updelta/families/common.json")))
    return tuple(out)


def tower_of(name: str) -> Tower | None:
    """The tower tensor `name` belongs to, None for the text model."""
    for t in towers():
        if t.match.search(name):
            return t
    return None


@lru_cache(maxsize=1)
def families() -> tuple[Family, ...]:
    """All families in detection order: descending priority (ties by name), the generic fallback last."""
    files = sorted(p.name for p in resources.files("updelta.families").iterdir()
                   if p.name.endswith(".json") and p.name not in ("common.json", f"{GENERIC}.json"))
    fams = sorted((Family.from_json(_load(f), f"updelta/families/{f}") for f in files),
                  key=lambda f: (-f.priority, f.name))
    return tuple(fams) + (Family.from_json(_load(f"{GENERIC}.json"), f"updelta/families/{GENERIC}.json"),)


_derived: dict[str, Family] = {}  # families from transformers' classes met in this process (by name)


def remember(fam: Family) -> Family:
    """Make a family from transformers' classes known to `family(name)` (heads, lens, plots look it up by name)."""
    _derived[fam.name] = fam
    return fam


def family(name: str) -> Family:
    """The family called `name`."""
    for fam in families():
        if fam.name == name:
            return fam
    if name in _derived:
        return _derived[name]
    raise UpdeltaError(f"unknown model family {name!r}; known: {', '.join(f.name for f in families())}")


def module_order(family_name: str) -> list[str]:
    """The modules of family `family_name` in forward order (e.g. llama: ..., q_proj, k_proj, v_proj, ...,
    o_proj, ..., gate_proj, up_proj, down_proj, ...); [] for the generic family and unknown names."""
    for fam in families() + tuple(_derived.values()):
        if fam.name == family_name:
            return list(fam.module_order)
    return []


def _config_claims(config) -> list[tuple[str, str]]:
    """(source, value) pairs config.json offers, most telling first; nothing for a config of the wrong shape."""
    out: list[tuple[str, str]] = []
    if not isinstance(config, dict):
        return out
    for where, cfg in (("", config), ("text_config.", config.get("text_config"))):
        if not isinstance(cfg, dict):
            continue
        archs = cfg.get("architectures")
        if isinstance(archs, str):
            archs = [archs]
        if isinstance(archs, list):
            out += [(f"config.json {where}architectures", a) for a in archs if isinstance(a, str)]
        mt = cfg.get("model_type")
        if isinstance(mt, str):
            out.append((f"config.json {where}model_type", mt))
    return out


def _by_config(config, only: str | None = None) -> tuple[Family, str, str] | None:
    """The family config.json names (`only`: "architectures" or "model_types", else both, architectures first)."""
    for source, value in _config_claims(config):
        key = "architectures" if source.endswith("architectures") else "model_types"
        if only is not None and key != only:
            continue
        for fam in families():
            if value in getattr(fam, key):
                return fam, source, value
    return None


def _by_names(names: list[str]) -> Family | None:
    for fam in families():
        if fam.detect is not None and any(fam.detect.search(n) for n in names):
            return fam
    return None


# The resolver of families derived from transformers' classes (`families.data.resolve`, registered by the
# package's __init__: data builds on this module, so this module does not import it).
STRUCTURE: list = []


def resolve_family(names: Iterable[str], config=None, structure: bool = True) -> FamilyMatch:
    """The family of a checkpoint with tensor `names` and parsed config.json `config` (any value; a
    non-dict or unknown content is ignored), and how it was found (docs/families.md).

    1. A family file whose `model_types` holds config.json's `model_type` (or `text_config.model_type`).
    2. `structure`: the architecture's own classes (`updelta.families.data.resolve`: the shipped data generated
       from transformers, the cache, or a live derivation), unless config.json has `auto_map` or a model_type
       transformers does not know; kept when it leaves no more tensors unnamed than the family files would.
    3. A family file named by config.json's `architectures`.
    The family config.json names is kept unless the tensor names contradict it: they point to another family and
    either match nothing of the named one (its `detect` or `stacked_experts` patterns) or point to a more specific
    family (higher priority: Phi-3 names under a config.json that says Llama).
    4. Tensor names, by descending priority, only when the guessed family names every tensor (else the generic
    keyword rules, with a note: another family's rules are never applied on a guess); 5. the generic fallback.
    Names of towers (`tower_of`) take no part in detection (a SigLIP tower's `self_attn.out_proj` is not OPT's),
    unless every name is a tower's."""
    names = list(names)
    names = [n for n in names if tower_of(n) is None] or names
    by_names = _by_names(names)
    hit = _by_config(config, "model_types")
    arch = _by_config(config, "architectures")
    if hit is not None and arch is not None and arch[0] is hit[0]:
        hit = arch  # both name it: reported as architectures (the more telling)
    if hit is not None and "text_config" in hit[1] and unnamed(hit[0], names):
        hit = None  # a text model inside another architecture (an audio tower beside it): the classes come first
    if hit is None and structure and isinstance(config, dict) and STRUCTURE:
        fam, where, note = STRUCTURE[0](config, names)
        if fam is not None:
            fallback = _json_match(names, config, by_names)
            if fallback.family.name != GENERIC and _unnamed(fallback.family, names) < _unnamed(fam, names):
                return replace(fallback, note=f"the {fam.name} classes ({where}) name fewer tensors than the "
                                              f"family files; {fallback.note or 'family JSON used'}")
            return FamilyMatch(remember(fam), "config.json model_type", config.get("model_type"), structure=where,
                               note=note)
        match = _json_match(names, config, by_names)
        return replace(match, note="; ".join(x for x in (f"no structure from transformers: {where}", match.note)
                                             if x))
    return _json_match(names, config, by_names, hit)


def unnamed(fam: Family, names: Iterable[str]) -> list[str]:
    """The stored names (towers and ignored buffers aside) family `fam` leaves in component `other`; a stacked
    expert tensor is judged by its first per-expert name (`stacked_experts`, docs/experts.md)."""
    out = []
    for n in names:
        if tower_of(n) is not None or is_ignored(n, fam):
            continue
        probe = n
        for pattern, templates in fam.stacked_experts:
            m = pattern.search(n)
            if m:
                probe = templates[0].format(*m.groups(), e=0)
                break
        if _parse(probe, fam).component == "other":
            out.append(n)
    return out


def _unnamed(fam: Family, names: list[str]) -> int:
    return len(unnamed(fam, names))


def _json_match(names: list[str], config, by_names: Family | None, hit=None) -> FamilyMatch:
    """Steps 1, 3, 4 and 5 of `resolve_family`: the family files only."""
    hit = hit or _by_config(config, "architectures")
    if hit is not None:
        fam, source, value = hit
        named_matches = fam.detect is None or any(fam.detect.search(n) or any(p.search(n) for p, _ in
                                                                             fam.stacked_experts) for n in names)
        if by_names is None or by_names is fam or (by_names.priority <= fam.priority and named_matches):
            return FamilyMatch(fam, source, value)
        return _guess(by_names, names, FamilyMatch(by_names, "tensor names", value, rejected=fam.name))
    if by_names is not None:
        return _guess(by_names, names, FamilyMatch(by_names, "tensor names"))
    return FamilyMatch(families()[-1], "fallback")


def _guess(fam: Family, names: list[str], match: FamilyMatch) -> FamilyMatch:
    """A family guessed from tensor names is applied only when it names every tensor; else the generic rules."""
    missed = unnamed(fam, names)
    if not missed:
        return match
    return FamilyMatch(families()[-1], "fallback", match.claimed, match.rejected,
                       note=f"tensor names look like family {fam.name} but its rules leave {len(missed)} tensors "
                            f"unnamed (e.g. {missed[0]}): not certain, generic keyword rules used")


def detect_family(names: Iterable[str], config=None) -> Family:
    """The family of a checkpoint (see `resolve_family`)."""
    return resolve_family(names, config).family


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
    """Layer, expert, component, module, parameter kind and tower of tensor `name`: a tower's tensor (`tower_of`) under
    the tower's rules (its layer is the tower's block index), any other under `family`'s rules."""
    tower = tower_of(name)
    if tower is not None:
        return replace(_parse(name, tower.rules), tower=tower.name)
    return _parse(name, family)


def _parse(name: str, family: Family) -> TensorName:
    m = family.layer.search(name)
    layer = int(m.group(1)) if m else None
    e = family.expert.search(name) if family.expert is not None else None
    expert = int(e.group(1)) if e else None
    last = name.rsplit(".", 1)
    param = last[1] if len(last) == 2 else "weight"
    padded = name if name.endswith(".") else name + "."
    if family.anchored:  # generated rules full-match the canonical name
        padded = canonical(padded[:-1]) + "."
    for rule in family.modules:
        mm = rule.pattern.search(padded)
        if mm:
            module = rule.module.format(*mm.groups()) if rule.module is not None else mm.group(1)
            return TensorName(layer, rule.component, module, rule.param or param, expert=expert)
    parts = name.split(".")
    module = parts[-2] if len(parts) >= 2 else parts[0]
    return TensorName(layer, "other", module, param, expert=expert)


def is_transposed(name: str, family: Family) -> bool:
    """True for weights stored [in, out] (GPT-2 Conv1D): spectral work transposes them to [out, in]."""
    return any(p.search(name) for p in family.transposed)


def is_ignored(name: str, family: Family) -> bool:
    """Non-parameter buffers (causal masks, rotary caches) that are never compared."""
    return any(p.search(name) for p in family.ignore)
