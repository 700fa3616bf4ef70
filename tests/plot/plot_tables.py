"""Planted result tables and drawing helpers for the plot tests."""
from __future__ import annotations

import numpy as np
import pandas as pd

MODS = [("attn", "q_proj"), ("attn", "k_proj"), ("attn", "v_proj"), ("attn", "o_proj"),
        ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj"), ("norm", "input_layernorm")]
LABELS = ["q", "k", "v", "o", "gate", "up", "down", "in_norm"]


def planted_value(ri: int, layer: int, j: int) -> float:
    """rel_delta planted at (run index, layer, module index): spans 1e-3 .. ~3 (log scale territory)."""
    return (ri + 1) * 10.0 ** (-(j % 4)) * (1 + layer / 100)


def planted_meta(runs) -> dict:
    return {"run_order": list(runs), "base": {"path": "/ckpt/base-model"},
            "runs": {r: {"path": f"/ckpt/{r}-ckpt"} for r in runs}, "options": {"atol": 1e-5, "eta": 1e-3}}


def planted_tensors(layers: int = 4, runs=("sft", "grpo"), bias: bool = False, head: bool = True) -> pd.DataFrame:
    """A per-tensor table with every cheap column, base norm 1 and n = 100 per tensor, so aggregates are exact:
    rel_delta = delta_fro = planted_value; sparsity_exact = 0.1 * (run index + 1)."""
    rows = []
    for ri, r in enumerate(runs):
        for layer in range(layers):
            for j, (comp, mod) in enumerate(MODS):
                for param in (("weight", "bias") if bias and comp != "norm" else ("weight",)):
                    v = planted_value(ri, layer, j) * (0.5 if param == "bias" else 1.0)
                    rows.append(_row(r, f"model.layers.{layer}.{mod}.{param}", layer, comp, mod, param, v, ri))
        if head:
            rows.append(_row(r, "lm_head.weight", None, "head", "lm_head", "weight", 0.5, ri))
    df = pd.DataFrame(rows)
    df["layer"] = df["layer"].astype("Int64")
    return df


def _row(run, name, layer, comp, mod, param, v, ri) -> dict:
    return {"run": run, "name": name, "layer": layer, "component": comp, "module": mod, "param": param,
            "shape": [10, 10], "numel": 100, "n_compared": 100, "delta_fro": v, "base_fro": 1.0, "rel_delta": v,
            "delta_max": v, "delta_mean_abs": v / 10, "cos_delta_base": 0.1 * (ri + 1) - 0.15,
            "sparsity_exact": 0.1 * (ri + 1), "sparsity_atol": 0.2 * (ri + 1), "sparsity_rtol": 0.1 * (ri + 1),
            "nonfinite_base": 0, "nonfinite_ft": 0, "added_rows": 0}


def overlaps(fig, labels, pad: float = 1.5) -> list[tuple[str, str]]:
    """Pairs of visible, non-empty tick labels whose drawn boxes, grown by `pad` pixels, intersect."""
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer).expanded(1, 1).padded(pad))
             for t in labels if t.get_visible() and t.get_text()]
    bad = []
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            if boxes[i][1].overlaps(boxes[j][1]):
                bad.append((boxes[i][0], boxes[j][0]))
    return bad


def draw(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas


def finite(a) -> np.ndarray:
    a = np.ma.filled(np.ma.asarray(a, dtype=float), np.nan)
    return a
