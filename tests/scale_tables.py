"""Synthetic result tables at real scale (many runs, 30-80 layers, unchanged runs), built without checkpoints.

Every tensor has n = 100 elements and ||W0|| = 1; runs named noop* are unchanged (every element equal).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

MODS = [("attn", "q_proj"), ("attn", "k_proj"), ("attn", "v_proj"), ("attn", "o_proj"),
        ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj"), ("norm", "input_layernorm")]
RUNS = {1: ["sft"], 7: ["sft", "dft", "grpo", "es", "sft40", "noop1", "noop2"],
        18: [f"run{i:02d}" for i in range(16)] + ["noop1", "noop2"]}
UNCHANGED = {"noop1", "noop2"}
K = 8  # singular values per tensor


def tensors(runs, layers: int) -> pd.DataFrame:
    """Per-tensor rows with raw sums, spectra (2-D tensors) and |D| histograms."""
    rng = np.random.default_rng(0)
    rows = []
    for ri, r in enumerate(runs):
        same = r in UNCHANGED
        for layer in range(layers):
            for j, (comp, mod) in enumerate(MODS):
                v = 0.0 if same else (ri + 1) * 1e-3 * (1 + 0.5 * rng.random()) * 10.0 ** (-(j % 3))
                hist = np.zeros(257)
                hist[-1] = 100 if same else 20
                if not same:
                    hist[110 + j] = 80
                two_d = comp != "norm"
                sv = np.zeros(K) if same else np.sort(rng.random(K))[::-1] * v
                rows.append({"run": r, "name": f"model.layers.{layer}.{mod}.weight", "layer": layer, "component": comp,
                             "module": mod, "param": "weight", "shape": [10, 10] if two_d else [10],
                             "numel": 100, "n_compared": 100, "ss_delta": v * v, "ss_base": 1.0,
                             "dot_delta_base": 0.0, "sum_abs_delta": v * 10, "n_eq": 100 if same else 20,
                             "n_le_atol": 100 if same else 30, "n_le_rtol": 100 if same else 20, "delta_fro": v,
                             "base_fro": 1.0, "rel_delta": v, "delta_max": v, "delta_mean_abs": v / 10,
                             "cos_delta_base": 0.0, "sparsity_exact": 1.0 if same else 0.2,
                             "sparsity_atol": 1.0 if same else 0.3, "sparsity_rtol": 1.0 if same else 0.2,
                             "nonfinite_base": 0, "nonfinite_ft": 0, "added_rows": 0, "hist": hist,
                             "topk_sv": sv if two_d else None, "stable_rank": (2.0 if not same else None) if two_d
                             else None, "energy_rank_90": (0 if same else 4) if two_d else None,
                             "spectral_s": 0.01 if two_d else None, "dtype_base": "bfloat16", "dtype_ft": "bfloat16",
                             "resized": False, "tied": False})
    df = pd.DataFrame(rows)
    df["layer"] = df["layer"].astype("Int64")
    df["energy_rank_90"] = df["energy_rank_90"].astype("Int64")
    return df


def pair_rows(runs, names=None) -> pd.DataFrame:
    """Per-tensor pair rows (or one row per pair when `names` is None) with every raw pair sum."""
    rows = []
    keys = names if names is not None else [None]
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            na = 0 if a in UNCHANGED else 80
            nb = 0 if b in UNCHANGED else 80
            for key in keys:
                row = {"run_a": a, "run_b": b, "dot": 0.1 * (na > 0) * (nb > 0), "ss_delta_a": 1.0 * (na > 0),
                       "ss_delta_b": 1.0 * (nb > 0), "n_compared": 100, "n_sign_agree": 30 * (na > 0) * (nb > 0)}
                if key is not None:
                    row |= dict(zip(("name", "layer", "component", "module", "param"), key))
                for c in ("exact", "atol", "rtol"):
                    row |= {f"n_changed_a_{c}": na, f"n_changed_b_{c}": nb, f"n_both_{c}": 64 * (na > 0) * (nb > 0),
                            f"expected_both_{c}": na * nb / 100}
                rows.append(row)
    return pd.DataFrame(rows)


def meta(runs) -> dict:
    return {"run_order": list(runs), "base": {"path": "/ckpt/base-model"},
            "runs": {r: {"path": f"/ckpt/{r}-ckpt"} for r in runs}, "options": {"atol": 1e-5, "eta": 1e-3},
            "hist_edges": [0.0] + [2.0 ** (i - 127) for i in range(1, 257)]}


def result(runs, layers: int):
    """A `Result` from the synthetic tables (aggregates computed by updelta)."""
    from updelta.tables.result import from_tensors

    t = tensors(runs, layers)
    names = list(dict.fromkeys(zip(t["name"], t["layer"], t["component"], t["module"], t["param"])))
    p = pair_rows(runs, names)
    p["layer"] = p["layer"].astype("Int64")
    return from_tensors(t, p, meta(runs))
