"""What a GGUF comparison did and what quantization did, as text lines and a table (docs/inputs.md, GGUF).

`by_quant_type(tensors)` aggregates the per-tensor rows of a result by the ggml type of the GGUF side
(`dtype_base` / `dtype_ft` hold "Q4_K", "Q8_0", ...): per run and type, the tensors, ||D||_F / ||W0||_F over
them (sums of squares, not a mean of ratios), and the module and the layer with the largest relative change.
When a Hugging Face folder is compared with a quantized GGUF made from it, D is the quantization error.
`gguf_lines(pairing_extra, tensors)` are the notes `updelta diff` prints (pure: DataFrames and dicts in, strings
out; torch-free).
"""
from __future__ import annotations

import math

import pandas as pd

GGML_PLAIN = ("F32", "F16", "BF16", "F64")


def _is_ggml(t) -> bool:
    return isinstance(t, str) and t.isupper() and t[:1] in "FQIMNT"


def by_quant_type(tensors):
    """DataFrame: run, side ("base"/"ft"), quant_type, tensors, rel_delta, worst module / layer (with their
    rel_delta), one row per run and ggml type of a GGUF side; empty when no side is GGUF."""

    rows = []
    if tensors is None or tensors.empty or "dtype_ft" not in tensors.columns:
        return pd.DataFrame(rows)
    df = tensors.copy()
    for side, col in (("ft", "dtype_ft"), ("base", "dtype_base")):
        keep = df[col].map(_is_ggml).astype(bool)
        if side == "base":  # the base's type only where the run's side is not GGUF (else grouped by the run's)
            keep &= ~df["dtype_ft"].map(_is_ggml).astype(bool)
        sub = df.loc[keep]
        for (run, qt), g in sub.groupby(["run", col]):
            def rel(x):
                b = math.sqrt(float((x.base_fro ** 2).sum()))
                return math.sqrt(float((x.delta_fro ** 2).sum())) / b if b else float("nan")
            mods = {m: rel(x) for m, x in g.groupby("module")}
            layers = {int(l_): rel(x) for l_, x in g.dropna(subset=["layer"]).groupby("layer")}
            wm = max(mods, key=mods.get) if mods else None
            wl = max(layers, key=layers.get) if layers else None
            rows.append({"run": run, "side": side, "quant_type": qt, "tensors": len(g), "rel_delta": rel(g),
                         "worst_module": wm, "worst_module_rel": mods.get(wm), "worst_layer": wl,
                         "worst_layer_rel": layers.get(wl)})
    return pd.DataFrame(rows)


def gguf_lines(extra: dict, tensors) -> list[str]:
    """Notes lines for a result whose pairing notes hold a "gguf" entry (io.gguf_names.align_gguf)."""
    g = extra.get("gguf") if isinstance(extra, dict) else None
    if not g:
        return []
    lines = [f"gguf: paired by {g.get('paired_by')}"]
    for who, e in g.items():
        if not isinstance(e, dict):
            continue
        types = ", ".join(f"{n} {t}" for t, n in sorted((e.get("tensor_types") or {}).items(), key=lambda x: -x[1]))
        line = f"gguf ({who}): {e.get('architecture')}, {types}"
        if "renamed" in e:
            line += f"; {e['renamed']} tensors under Hugging Face names"
            for what, names in (e.get("transformed") or {}).items():
                line += f", {len(names)} {what}"
        lines.append(line)
        for key, label in (("unmapped", "no Hugging Face name"), ("unconverted", "not convertible")):
            names = e.get(key) or []
            if names:
                lines.append(f"gguf ({who}) {label}, compared under GGUF names if at all: {', '.join(names[:10])}"
                             + (" ..." if len(names) > 10 else ""))
    q = by_quant_type(tensors)
    for r in q.itertuples():
        worst = ""
        if r.rel_delta > 0:
            worst = (f"; most in module {r.worst_module} ({r.worst_module_rel:.3g})" if r.worst_module else "") + (
                f", layer {int(r.worst_layer)} ({r.worst_layer_rel:.3g})" if r.worst_layer == r.worst_layer
                and r.worst_layer is not None else "")
        lines.append(f"by quant type ({r.run}, {r.side} side): {r.quant_type}: {r.tensors} tensors, "
                     f"rel_delta {r.rel_delta:.4g}{worst}")
    if tensors is not None and not tensors.empty and {"dtype_base", "dtype_ft"} <= set(tensors.columns):
        shared = tensors.loc[(tensors.dtype_base == tensors.dtype_ft) & tensors.dtype_ft.map(_is_ggml).astype(bool)
                             & ~tensors.dtype_ft.isin(GGML_PLAIN)]
        if len(shared):
            lines.append(f"sparsity of {len(shared)} tensors quantized alike on both sides: an element counts as "
                         f"unchanged only when its block's scale(s) and its own code are unchanged; a weight change "
                         f"that moves a block's scale changes every element of the block (32 or 256), so read "
                         f"'sparse' as a statement about blocks, not about individual weights")
    return lines
