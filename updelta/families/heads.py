"""Attention-head geometry: which rows or columns of an attention weight belong to which head (plain data).

The geometry comes from the base checkpoint's config.json (the nested `text_config` where present) and the
family's `qkv_layout` (family data in `updelta/families/*.json`, docs/metrics.md "Where an update sits"):

- `separate` (Llama, Mistral, Qwen2, Mixtral, ...): q rows [h*d, (h+1)*d) are query head h; k and v rows
  [g*d, (g+1)*d) are KV head g (G = num_key_value_heads, G < H under GQA, 1 under MQA); o columns
  [h*d, (h+1)*d) are head h's output;
- `stacked` (Phi-3 qkv_proj, GPT-2 c_attn in [out, in] orientation): rows [q (H*d); k (G*d); v (G*d)];
- `grouped` (Falcon; GPT-NeoX and Bloom as `per_head`, the case G = H): per KV group g, rows
  [q for the group's H/G heads; k_g; v_g]. Falcon's G is num_kv_heads with new_decoder_architecture,
  1 with multi_query, H otherwise (its three layouts are this one rule);
- `mla` (DeepSeek-V2/V3): q_proj / q_b_proj rows per head [qk_nope; qk_rope], kv_b_proj rows per head
  [k_nope_h; v_h], o_proj columns per head (v_head_dim).

Every split is checked against the tensor shapes; a missing config, an undeclared layout or any mismatch skips
the heads of the whole model with a note (`pairing.notes["heads"]`), never a guess. A split is a tuple of
contiguous ranges (part, head, start, stop) along one axis of the *stored* tensor (`axis`), so the cheap pass
sums row or column statistics over ranges (`metrics.concentration`).
"""
from __future__ import annotations

from dataclasses import dataclass

from updelta.errors import UpdeltaError
from updelta.families.naming import family as family_of

LAYOUTS = ("separate", "stacked", "per_head", "grouped", "mla")


@dataclass(frozen=True)
class HeadSplit:
    """The heads of one stored 2-D tensor: ranges (part, head, start, stop) along stored axis `axis`."""

    axis: int  # 0: stored rows, 1: stored columns
    ranges: tuple[tuple[str, int, int, int], ...]


@dataclass(frozen=True)
class Geometry:
    heads: int  # H, query heads
    kv_heads: int  # G, KV heads (groups)
    head_dim: int  # d


def family_layout(family: str) -> dict | None:
    """The family's `qkv_layout` object ({"layout": ..., "modules": {module: part}}), None when undeclared
    (read through `naming.family`, the one loader of the family data)."""
    try:
        d = family_of(family).qkv_layout
    except UpdeltaError:
        return None
    return d if isinstance(d, dict) and d.get("layout") in LAYOUTS else None


def text_config(config: dict | None) -> dict:
    """The text model's config: `text_config` of a multimodal config.json, else the config itself."""
    config = config or {}
    tc = config.get("text_config")
    return tc if isinstance(tc, dict) and tc else config


def _int(cfg: dict, *keys) -> int | None:
    for k in keys:
        v = cfg.get(k)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def geometry(cfg: dict, layout: dict) -> Geometry | str:
    """H, G, d from a (text) config, or why not (a note)."""
    h = _int(cfg, "num_attention_heads", "n_head", "n_heads", "num_heads", "decoder_attention_heads")
    if h is None:
        return "config.json has no num_attention_heads"
    if layout.get("kv_rule") == "falcon":
        new, mqa = bool(cfg.get("new_decoder_architecture")), bool(cfg.get("multi_query", True))
        g = (_int(cfg, "num_kv_heads") or h) if new else (1 if mqa else h)
    elif layout["layout"] == "per_head":
        g = h
    else:
        g = _int(cfg, "num_key_value_heads", "num_kv_heads", "n_head_kv") or h
    hidden = _int(cfg, "hidden_size", "n_embd", "d_model")
    d = _int(cfg, "head_dim") if layout["layout"] != "mla" else _int(cfg, "v_head_dim")
    if d is None:
        if hidden is None or hidden % h:
            return f"config.json gives no head_dim and hidden_size {hidden} is not a multiple of {h} heads"
        d = hidden // h
    if h % g:
        return f"config.json: {h} attention heads are not a multiple of {g} KV heads"
    return Geometry(h, g, d)


def _blocks(part_sizes: list[tuple[str, int, int]], repeat: int) -> list[tuple[str, int, int, int]]:
    """Ranges of `repeat` groups in turn, each made of (part, first head, count of heads of d rows...)."""
    out, pos = [], 0
    for g in range(repeat):
        for part, first, n, d in part_sizes:
            for i in range(n):
                out.append((part, first + g * n + i if part == "q" else g, pos, pos + d))
                pos += d
    return out


def split_ranges(part: str, geo: Geometry, layout: dict, cfg: dict) -> tuple[int, list] | str:
    """(logical axis, ranges along it) of a module of role `part` (q, k, v, o, qkv, kv), or a reason."""
    H, G, d = geo.heads, geo.kv_heads, geo.head_dim
    kind = layout["layout"]
    if part == "o":
        return 1, [("o", h, h * d, (h + 1) * d) for h in range(H)]
    if kind == "mla":
        nope, rope = _int(cfg, "qk_nope_head_dim"), _int(cfg, "qk_rope_head_dim")
        if nope is None or rope is None:
            return "config.json has no qk_nope_head_dim / qk_rope_head_dim"
        if part == "q":
            return 0, [("q", h, h * (nope + rope), (h + 1) * (nope + rope)) for h in range(H)]
        if part == "kv":
            step = nope + d
            return 0, [r for h in range(H) for r in (("k", h, h * step, h * step + nope),
                                                     ("v", h, h * step + nope, (h + 1) * step))]
        return f"module role {part!r} is not part of the mla layout"
    if part == "q":
        return 0, [("q", h, h * d, (h + 1) * d) for h in range(H)]
    if part in ("k", "v"):
        return 0, [(part, g, g * d, (g + 1) * d) for g in range(G)]
    if part == "qkv" and kind == "stacked":
        q = [("q", h, h * d, (h + 1) * d) for h in range(H)]
        k = [("k", g, H * d + g * d, H * d + (g + 1) * d) for g in range(G)]
        v = [("v", g, (H + G) * d + g * d, (H + G) * d + (g + 1) * d) for g in range(G)]
        return 0, q + k + v
    if part == "qkv" and kind in ("grouped", "per_head"):
        rep = H // G
        return 0, _blocks([("q", 0, rep, d), ("k", 0, 1, d), ("v", 0, 1, d)], G)
    return f"module role {part!r} does not fit the {kind} layout"


def head_splits(family: str, config: dict | None, tensors) -> tuple[dict[str, HeadSplit], dict]:
    """{tensor name: HeadSplit} of the paired attention tensors and a note ({"layout", "heads", ...} or
    {"skipped": why}). `tensors`: objects with name, info (TensorName), base.shape (stored) and transposed."""
    layout = family_layout(family)
    if layout is None:
        return {}, {"skipped": f"family {family!r} declares no qkv_layout"}
    cfg = text_config(config)
    if not cfg:
        return {}, {"skipped": "no config.json beside the base checkpoint"}
    geo = geometry(cfg, layout)
    if isinstance(geo, str):
        return {}, {"skipped": geo}
    roles = layout.get("modules") or {}
    out: dict[str, HeadSplit] = {}
    for t in tensors:
        i = t.info
        part = roles.get(i.module)
        shape = tuple(t.base.shape)
        if part is None or i.component != "attn" or i.param != "weight" or i.tower is not None or len(shape) != 2:
            continue
        got = split_ranges(part, geo, layout, cfg)
        if isinstance(got, str):
            return {}, {"skipped": f"{t.name}: {got}"}
        axis, ranges = got
        logical = (shape[1], shape[0]) if t.transposed else shape
        if ranges[-1][3] != logical[axis]:
            return {}, {"skipped": f"{t.name}: shape {list(logical)} ([out, in]) does not fit {geo.heads} heads, "
                                   f"{geo.kv_heads} KV heads of dim {geo.head_dim} ({layout['layout']} layout, "
                                   f"axis {axis} should be {ranges[-1][3]})"}
        out[t.name] = HeadSplit(1 - axis if t.transposed else axis, tuple(ranges))
    if not out:
        return {}, {"skipped": "no attention weight named in the family's qkv_layout"}
    return out, {"layout": layout["layout"], "heads": geo.heads, "kv_heads": geo.kv_heads,
                 "head_dim": geo.head_dim, "tensors": len(out)}
