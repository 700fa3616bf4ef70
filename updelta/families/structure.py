"""A model's structure from transformers' own classes: config.json -> family data (docs/families.md, "Structure
from transformers").

`derive(config)` builds the architecture's skeleton on the `meta` device (no memory, no weights, never
`trust_remote_code`), walks every state-dict entry's owning module chain and gives each one its component from
the module classes (`*Attention`, `*MLP`, `*Experts`, `*Router`, `*Mamba*Mixer`, norms, embeddings, the output
embedding), its module name (the path inside the block, the layer and expert indices taken out), its layer and
its expert index. On-disk names that differ from the module parameters (fused or renamed expert weights of
transformers 5: Mixtral's `block_sparse_moe.experts.3.w1`) come from transformers' own checkpoint-conversion rules
(`revert_weight_conversion`, one parameter at a time). The result is a family dict in the family-file syntax
(docs/formats.md, "Family detection") with `anchored` rules: each rule full-matches a canonical name.

This module imports torch and transformers lazily (inside `derive`); `updelta.families.data` decides whether a
derivation is needed at all (shipped data and the on-disk cache first).
"""
from __future__ import annotations

import contextlib
import re
from importlib import metadata

from updelta.families.naming import canonical

SUPPORTED = ((5, 0), (6, 0))  # transformers versions [from, to) whose classes updelta reads
MAX_LAYERS = 512  # a checkpoint with more blocks than this falls back to the family JSON (never a huge build)

ROUTER_LEAVES = ("e_score_correction_bias", "expert_bias", "router_bias", "expert_score_bias")
EXPERT_LISTS = ("experts", "local_experts")
QKV_ROLES = {"q_proj": "q", "query": "q", "q": "q", "wq": "q", "k_proj": "k", "key": "k", "k": "k", "wk": "k",
             "v_proj": "v", "value": "v", "v": "v", "wv": "v", "o_proj": "o", "out_proj": "o", "o": "o", "wo": "o",
             "dense": "o", "c_proj": "o", "qkv_proj": "qkv", "c_attn": "qkv", "Wqkv": "qkv", "qkv": "qkv",
             "W_pack": "qkv", "query_key_value": "qkv", "q_b_proj": "q", "kv_b_proj": "kv", "project_q": "q",
             "project_k": "k", "project_v": "v", "attention_out": "o", "q_lin": "q", "k_lin": "k", "v_lin": "v",
             "out_lin": "o", "Wo": "o", "Wqkv_proj": "qkv"}
MLP_ATTRS = ("fc1", "fc2", "fc_in", "fc_out", "w1", "w2", "w3", "c_fc", "dense_h_to_4h", "dense_4h_to_h")


class StructureError(Exception):
    """Why a structure could not be derived (a pairing note; never a traceback)."""


def transformers_version() -> str | None:
    """The installed transformers version, None when it is not installed (checked without importing it)."""
    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return None


def supported(version: str | None) -> bool:
    """True for a transformers version inside `SUPPORTED`."""
    if not version:
        return False
    m = re.match(r"(\d+)\.(\d+)", version)
    return bool(m) and SUPPORTED[0] <= (int(m.group(1)), int(m.group(2))) < SUPPORTED[1]


def text_config(config: dict) -> dict:
    tc = config.get("text_config")
    return tc if isinstance(tc, dict) and tc.get("model_type") else config


def refuse_reason(config) -> str | None:
    """Why `config` must not be built from transformers' classes (None: it may be)."""
    if not isinstance(config, dict):
        return "no config.json (or not a JSON object)"
    if "auto_map" in config:
        return "config.json has auto_map (remote code): updelta never runs it"
    mt = config.get("model_type")
    if not isinstance(mt, str) or not mt:
        return "config.json has no model_type"
    return None


# ---------------------------------------------------------------------------------------------- classification


def _has(cls: str, *words: str) -> bool:
    return any(w in cls for w in words)


def _moe_parent(cls: str, module) -> bool:
    return _has(cls, "Moe", "MoE", "Sparse", "Expert", "Router") or any(
        n in EXPERT_LISTS for n, _ in module.named_children())


def component_of(chain: list[tuple[str, object]], leaf: str, head_ids: set[int], embed_ids: set[int]) -> str:
    """The component of parameter `leaf` owned by the last module of `chain` ((attribute, module) from the root).

    Owner first, then its parents: norms, embeddings, routers (router/gate classes, a `gate`/`router` under a
    mixture-of-experts block, routing biases), experts, state-space mixers, attention (linear attention,
    cross-attention, indexers, sinks included), MLPs; the model's output embedding is `head`."""
    if leaf in ROUTER_LEAVES:
        return "router"
    owner = chain[-1][1]
    if id(owner) in head_ids:
        return "head"
    if id(owner) in embed_ids:
        return "embed"
    for i in range(len(chain) - 1, 0, -1):
        attr, mod = chain[i]
        cls = type(mod).__name__
        parent = chain[i - 1][1]
        if re.search(r"Norm(\dd|Gated)?$", cls):  # LayerNorm, RMSNorm, BatchNorm1d; not RobertaPreLayerNormSelfOutput
            return "norm"
        if _has(cls, "Embedding") and not _has(cls, "Rotary"):
            return "embed"
        if _has(cls, "Router", "Gating") or (_has(cls, "Gate") and not _has(cls, "Gated")):
            return "router"
        if (attr in ("gate", "router") or attr.endswith("_gate") and "expert" in attr) and _moe_parent(
                type(parent).__name__, parent):
            return "router"
        if _has(cls, "Expert") and not _has(cls, "SharedExpert"):
            return "mlp"
        if _has(cls, "Mamba", "Mixer", "SSM", "Recurrent", "LSTM") and not _has(cls, "MLP"):
            return "ssm"
        if _has(cls, "Attention", "Attn", "GatedDeltaNet", "Indexer", "DeltaNet", "SelfOutput"):
            return "attn"
        if _has(cls, "MLP", "Mlp", "FeedForward", "FFN", "Ffn", "Moe", "MoE", "SparseMoe", "Intermediate") or \
                cls.endswith("Output") and not _has(cls, "Model"):
            return "mlp"
        if _has(cls, "LMHead", "PredictionHead", "Predictions", "LMPrediction", "OnlyMLMHead"):
            return "head"
        if attr in ("mlp", "ffn", "feed_forward", "mlps") and cls in ("Sequential", "ModuleList"):
            return "mlp"
        if attr in MLP_ATTRS and _has(type(parent).__name__, "Layer", "Block"):
            return "mlp"
    return "other"


def _attn_role(parts: list[str], chain, comp: str) -> str | None:
    """q, k, v, o, qkv or kv for a weight of a standard (self-)attention module's projection; None otherwise
    (linear attention, cross-attention, indexers have no head table). chain[-1] owns the weight (attribute
    parts[-2]), chain[-2] is its parent (attribute parts[-3])."""
    if comp != "attn" or parts[-1] != "weight" or len(parts) < 3:
        return None
    wrapped = parts[-2] == "linear" and len(parts) >= 4 and len(chain) >= 3  # moshi: q_proj.linear.weight
    proj, attn_i = (parts[-3], -3) if wrapped else (parts[-2], -2)
    role = QKV_ROLES.get(proj)
    attn_attr, attn_cls = chain[attn_i][0], type(chain[attn_i][1]).__name__
    if role is None or not _has(attn_cls, "Attention", "SelfOutput") or "cross" in attn_attr or _has(
            attn_cls, "Cross", "Linear", "Indexer", "Lightning"):
        return None
    return role


def _expert_owner(chain) -> bool:
    return any(_has(type(m).__name__, "Expert") and not _has(type(m).__name__, "SharedExpert") for _, m in chain)


# ---------------------------------------------------------------------------------------------- templates


def _template(name: str, expert_after: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(parts with ints replaced by markers, kinds of the markers in order: layer, expert or index)."""
    parts, kinds = [], []
    seen_layer = False
    for p in name.split("."):
        if p.isdigit():
            prev = parts[-1] if parts else ""
            if prev in expert_after:
                kinds.append("expert")
            elif not seen_layer:
                kinds.append("layer")
                seen_layer = True
            else:
                kinds.append("index")
            parts.append("\0")
        else:
            parts.append(p)
    return parts, kinds


def _module_and_param(parts: list[str], kinds: list[str], stacked: bool) -> tuple[list[str], str]:
    """(module path parts with a `{i}` per kept index, param) of a templated canonical name."""
    *mod, leaf = parts
    param = leaf
    if stacked:  # per-expert view of a stacked tensor: <owner>.<e>.<leaf>, leaf names the projection
        param = "bias" if leaf.endswith("_bias") else "weight"
        mod = mod + [leaf.removesuffix("_bias")]
    elif leaf not in ("weight", "bias"):  # a parameter of its own (sinks, A_log, D): its own module name
        mod = mod + [leaf]
    out, k = [], 0
    after_layer = "layer" not in kinds
    for p in mod:
        if p == "\0":
            kind = kinds[k]
            if kind == "index" and after_layer:
                out.append(f"{{{k}}}")
            if kind == "layer":
                after_layer = True
                out = []
            k += 1
            continue
        out.append(p)
    return out, param


def _shorten(mods: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """Module names: the in-block path with its first part (self_attn, mlp, ...) dropped where that keeps names
    unique (q_proj; experts.w1), else the whole path (encoder_attn.q_proj beside self_attn.q_proj)."""
    short = {k: ".".join(v[1:]) if len(v) > 1 else ".".join(v) for k, v in mods.items()}
    owners: dict[str, set[str]] = {}
    for k, s in short.items():
        owners.setdefault(s, set()).add(".".join(mods[k]))
    return {k: (s if len(owners[s]) == 1 else ".".join(mods[k])) for k, s in short.items()}


# ---------------------------------------------------------------------------------------------- derivation


def build_skeleton(config: dict, layers: int | None = None):
    """The model of `config` on the meta device, with `layers` blocks (the checkpoint's own count) when given."""
    import torch  # torch: kept out of torch-free paths
    from transformers import AutoModelForCausalLM  # optional extra: train
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING  # optional extra: train
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES  # optional extra: train

    mt = config["model_type"]
    if mt not in CONFIG_MAPPING:
        raise StructureError(f"model_type {mt!r} is unknown to transformers {transformers_version()}")
    cfg_d = _floats({k: v for k, v in config.items() if k not in ("auto_map", "quantization_config", "_name_or_path")})
    try:
        cfg = CONFIG_MAPPING[mt].from_dict(cfg_d)
    except Exception as e:  # noqa: BLE001 - a malformed config (any error transformers raises): a note
        raise StructureError(f"transformers cannot read config.json ({type(e).__name__}: {str(e)[:160]})") from None
    if layers is not None:
        _set_layers(cfg, layers)
    n = _layers_of(cfg)
    if n is not None and n > MAX_LAYERS:
        raise StructureError(f"config.json asks for {n} layers (more than {MAX_LAYERS}); not built")
    import transformers  # optional extra: train
    archs = [a for a in (config.get("architectures") or []) if isinstance(a, str)]
    cls = next((getattr(transformers, a) for a in archs if a.isidentifier() and hasattr(transformers, a)), None)
    if cls is None or not hasattr(cls, "_from_config"):
        cls = AutoModelForCausalLM
        if mt not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            from transformers import AutoModel  # optional extra: train
            cls = AutoModel
    try:
        with torch.device("meta"):
            return (cls._from_config(cfg) if cls not in (AutoModelForCausalLM,) and not cls.__name__.startswith(
                "Auto") else cls.from_config(cfg)), cfg
    except Exception as e:  # noqa: BLE001 - a constructor that raises: a note, not a traceback
        raise StructureError(f"transformers {transformers_version()} cannot build {mt} from config.json "
                             f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})") from None


def _floats(v):
    """config.json's encoded special floats ({"__float__": "Infinity"}) as floats."""
    if isinstance(v, dict):
        if set(v) == {"__float__"}:
            try:
                return float(v["__float__"])
            except (TypeError, ValueError):
                return v
        return {k: _floats(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_floats(x) for x in v]
    return v


def _subconfigs(cfg):
    out = [cfg]
    for k in ("text_config", "decoder"):
        c = getattr(cfg, k, None)
        if c is not None and hasattr(c, "to_dict"):
            out.append(c)
    return out


LAYER_KEYS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers")


def _layers_of(cfg) -> int | None:
    for c in _subconfigs(cfg):
        for k in LAYER_KEYS:
            v = getattr(c, k, None)
            if isinstance(v, int) and not isinstance(v, bool):
                return v
    return None


def _set_layers(cfg, n: int) -> None:
    for c in _subconfigs(cfg):
        for k in LAYER_KEYS:
            if isinstance(getattr(c, k, None), int):
                with contextlib.suppress(Exception):  # a config that refuses the count keeps its own
                    setattr(c, k, n)
        for k in ("layer_types", "layers_block_type", "mlp_layer_types"):
            cur = getattr(c, k, None)
            if isinstance(cur, (list, tuple)) and len(cur) > n:
                with contextlib.suppress(Exception):
                    setattr(c, k, type(cur)(cur[:n]))


def family_from_model(model, cfg, name: str, version: str) -> dict:
    """The family dict (anchored rules) of a built model (see the module docstring)."""
    from transformers.core_model_loading import revert_weight_conversion  # optional extra: train


    modules = dict(model.named_modules())
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    head_ids = {id(head)} if head is not None else set()
    embed_ids = {id(emb)} if emb is not None else set()
    state = model.state_dict()
    expert_after = set(EXPERT_LISTS)
    rows: list[dict] = []  # one per on-disk template
    for key, tensor in state.items():
        parts = key.split(".")
        chain = [("", model)] + [(parts[i], modules.get(".".join(parts[: i + 1]))) for i in range(len(parts) - 1)]
        if any(m is None for _, m in chain):
            continue
        comp = component_of(chain, parts[-1], head_ids, embed_ids)
        owner_cls = type(chain[-1][1]).__name__
        stacked = _expert_owner(chain) and parts[-1] not in ("weight", "bias") or (
            _has(owner_cls, "Expert") and not _has(owner_cls, "SharedExpert") and tensor.dim() >= 2
            and parts[-1] in ("weight", "bias") and tensor.dim() == 3)
        if stacked:
            expert_after.add(parts[-2])
        try:
            reverted = dict(revert_weight_conversion(model, {key: tensor})) or {key: tensor}
        except Exception:  # noqa: BLE001 - a conversion rule that cannot run on meta: the module name as is
            reverted = {key: tensor}
        if (parts[-1] == "weight" and type(chain[-1][1]).__name__ == "Linear" and key[:-6] + "bias" not in state
                and len(reverted) == 1 and next(iter(reverted)).endswith(".weight")):
            reverted[next(iter(reverted))[:-6] + "bias"] = None  # the same module with a bias (another config)
        if key not in reverted:  # the in-memory name too (a transformers 5 state dict: fused, stacked experts)
            reverted[key] = tensor
        disk = list(reverted)
        for d in disk:
            t = reverted[d]
            rows.append({"disk": canonical(d), "comp": comp,
                         "stacked": stacked and (d == key or len(reverted) <= 3) and (t is None or t.dim() ==
                                                                                     tensor.dim()),
                         "conv1d": owner_cls == "Conv1D", "attn_role": _attn_role(parts, chain, comp)})
    # a stacked weight named <owner>.weight (granite input_linear) splits as <owner>.<e>.weight
    rules, seen, mods_full = [], set(), {}
    layer_containers, expert_containers = set(), set()
    for r in rows:
        disk = r["disk"]
        parts = disk.split(".")
        if r["stacked"]:
            if parts[-1] in ("weight", "bias"):  # <owner>.<e>.weight
                parts = parts[:-1] + ["0", parts[-1]]
                expert_after.add(parts[-3])
            else:
                parts = parts[:-1] + ["0", parts[-1]]
                expert_after.add(parts[-3])
        tparts, kinds = _template(".".join(parts), tuple(expert_after))
        for i, p in enumerate(tparts):
            if p == "\0":
                kind = kinds[sum(1 for q in tparts[:i] if q == "\0")]
                (layer_containers if kind == "layer" else expert_containers if kind == "expert" else set()).add(
                    tparts[i - 1] if i else "")
        stacked_leaf = r["stacked"] and tparts[-1] not in ("weight", "bias")
        mod, param = _module_and_param(tparts, kinds, stacked_leaf)
        pattern = "^" + r"\.".join(r"(\d+)" if p == "\0" else re.escape(p) for p in tparts) + r"\.$"
        if pattern in seen:
            continue
        seen.add(pattern)
        mods_full[pattern] = tuple(mod)
        rules.append({"pattern": pattern, "component": r["comp"], "param": param, "_role": r["attn_role"],
                      "_stacked": r["stacked"], "_disk": disk, "_conv1d": r["conv1d"]})
    short = _shorten(mods_full)
    order: list[str] = []
    for rule in rules:
        rule["module"] = short[rule["pattern"]] or rule["param"]
        if rule["module"] not in order:
            order.append(rule["module"])
    qkv = {rule["module"]: rule["_role"] for rule in rules if rule["_role"]}
    roles = set(qkv.values())
    layout = None
    if {"q", "kv", "o"} <= roles:
        layout = {"layout": "mla", "modules": {m: p for m, p in qkv.items() if p in ("q", "kv", "o")}}
    elif {"q", "k", "v", "o"} <= roles:
        layout = {"layout": "separate", "modules": qkv}
    elif {"qkv", "o"} <= roles:
        fused = [m for m, p in qkv.items() if p == "qkv"]
        kind = "per_head" if any(m.endswith("query_key_value") for m in fused) else "stacked"
        layout = {"layout": kind, "modules": {m: p for m, p in qkv.items() if p in ("qkv", "o")}}
    stacked = []
    for rule in rules:
        if rule["_stacked"]:
            parts = rule["_disk"].split(".")
            owner = ".".join(parts[:-1])
            tparts, _ = _template(owner, tuple(expert_after))
            stacked.append({"pattern": "^((?:.*\\.)?)(" + r"\.".join(
                r"\d+" if p == "\0" else re.escape(p) for p in tparts) + r")\.(" + re.escape(parts[-1]) + ")$",
                "as": ["{0}{1}.{e}.{2}"]})
    transposed_p = [r"(?:^|\.)" + r"\.".join(r"\d+" if p == "\0" else re.escape(p) for p in
                                              _template(rule["_disk"], tuple(expert_after))[0]) + "$"
                    for rule in rules if rule["_conv1d"]]
    tied = []
    hw = next((r["_disk"] for r in rules if r["component"] == "head" and r["param"] == "weight"), None)
    ew = next((r["_disk"] for r in rules if r["component"] == "embed" and r["_disk"].endswith("embed_tokens.weight")),
              None) or next((r["_disk"] for r in rules if r["component"] == "embed" and r["param"] == "weight"
                             and "." not in r["_disk"].rsplit(".", 2)[0]), None)
    if hw and ew:
        tied.append([hw, ew])
    lay = sorted(c for c in layer_containers if c)
    exp = sorted(c for c in expert_containers if c)
    cfgd = cfg.to_dict()
    out = {
        "name": name,
        "description": f"{name}: from the transformers {version} classes ({type(model).__name__})",
        "generated": {"transformers": version, "class": type(model).__name__,
                      "config_model_type": getattr(model.config, "model_type", None)},
        "priority": 0,
        "architectures": [a for a in (cfgd.get("architectures") or []) if isinstance(a, str)],
        "model_types": [name],
        "anchored": True,
        "layer": r"(?:^|\.)(?:" + "|".join(map(re.escape, lay or ["layers"])) + r")\.(\d+)\.",
        "modules": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rules],
        "module_order": order,
        "tied": tied,
        "transposed": transposed_p,
        "ignore": [r"rotary_emb\.inv_freq$"],
    }
    if exp:
        out["expert"] = r"\.(?:" + "|".join(map(re.escape, exp)) + r")\.(\d+)\."
    if stacked:
        out["stacked_experts"] = stacked
    if layout:
        out["qkv_layout"] = layout
    return out


def derive(config: dict, layers: int | None = None) -> dict:
    """The family dict of checkpoint config `config` (a parsed config.json) from transformers' classes, built
    with `layers` blocks (the checkpoint's own count); raises `StructureError` with the reason it cannot."""
    why = refuse_reason(config)
    if why:
        raise StructureError(why)
    version = transformers_version()
    if not supported(version):
        raise StructureError(f"transformers {version or 'is not installed'} "
                             f"{'is outside the supported range' if version else ''}".strip())
    if layers is not None and layers > MAX_LAYERS:
        raise StructureError(f"the checkpoint has {layers} layers (more than {MAX_LAYERS}); not built")
    model, cfg = build_skeleton(config, layers)
    try:
        return family_from_model(model, cfg, config["model_type"], version)
    except StructureError:
        raise
    except Exception as e:  # noqa: BLE001 - never a traceback from an odd architecture
        raise StructureError(f"reading the {config['model_type']} classes failed ({type(e).__name__}: "
                             f"{str(e)[:160]})") from None
