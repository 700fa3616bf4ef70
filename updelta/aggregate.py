"""Aggregate per-tensor rows into per-layer, per-component and whole-model figures.

Done correctly (metrics.md): norms from sums of squares, cosines from summed dot
products, sparsity and mean |D| weighted by element count - never averages of ratios.
Spectral figures are medians over 2-D tensors (`metrics.spectral.summarize`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .metrics import pairwise as pw

CHEAP = ["delta_fro", "base_fro", "rel_delta", "delta_max", "delta_mean_abs", "cos_delta_base",
         "sparsity_exact", "sparsity_atol", "sparsity_rtol"]


def _groups(df: pd.DataFrame, by: list[str]):
    return df.groupby(by, dropna=False, sort=False, observed=True) if by else [((), df)]


def aggregate_tensors(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """One row per group of `by` (e.g. ["run"], ["run", "component"], ["run", "layer", "component"])."""
    if df.empty:
        return pd.DataFrame(columns=by + CHEAP + ["numel", "n_tensors"])
    n = df["n_compared"].astype("float64")
    ss_d = df["delta_fro"] ** 2
    ss_b = df["base_fro"] ** 2
    w = pd.DataFrame({
        **{k: df[k] for k in by},
        "ss_d": ss_d, "ss_b": ss_b,
        "dot": (df["cos_delta_base"] * df["delta_fro"] * df["base_fro"]).fillna(0.0),
        "sabs": (df["delta_mean_abs"] * n).fillna(0.0),
        "eq": (df["sparsity_exact"] * n).fillna(0.0), "at": (df["sparsity_atol"] * n).fillna(0.0),
        "rt": (df["sparsity_rtol"] * n).fillna(0.0), "n": n, "numel": df["numel"],
        "delta_max": df["delta_max"], "nonfinite_base": df["nonfinite_base"], "nonfinite_ft": df["nonfinite_ft"],
        "added_rows": df.get("added_rows", 0), "one": 1,
    })
    g = w.groupby(by, dropna=False, sort=False, observed=True) if by else w.assign(_all=0).groupby("_all")
    s = g.agg(ss_d=("ss_d", "sum"), ss_b=("ss_b", "sum"), dot=("dot", "sum"), sabs=("sabs", "sum"),
              eq=("eq", "sum"), at=("at", "sum"), rt=("rt", "sum"), n=("n", "sum"), numel=("numel", "sum"),
              delta_max=("delta_max", "max"), nonfinite_base=("nonfinite_base", "sum"),
              nonfinite_ft=("nonfinite_ft", "sum"), added_rows=("added_rows", "sum"), n_tensors=("one", "sum"))
    out = pd.DataFrame(index=s.index)
    nn = s["n"].replace(0, np.nan)
    out["delta_fro"] = np.sqrt(s["ss_d"])
    out["base_fro"] = np.sqrt(s["ss_b"])
    out["rel_delta"] = out["delta_fro"] / out["base_fro"].replace(0, np.nan)
    out["delta_max"] = s["delta_max"]
    out["delta_mean_abs"] = s["sabs"] / nn
    out["cos_delta_base"] = s["dot"] / (out["delta_fro"] * out["base_fro"]).replace(0, np.nan)
    out["sparsity_exact"] = s["eq"] / nn
    out["sparsity_atol"] = s["at"] / nn
    out["sparsity_rtol"] = s["rt"] / nn
    out["numel"] = s["numel"].astype("int64")
    out["n_compared"] = s["n"].astype("int64")
    out["n_tensors"] = s["n_tensors"].astype("int64")
    out["nonfinite_base"] = s["nonfinite_base"].astype("int64")
    out["nonfinite_ft"] = s["nonfinite_ft"].astype("int64")
    out["added_rows"] = s["added_rows"].astype("int64")
    out = out.reset_index()
    if not by:
        out = out.drop(columns=["_all"])
    spec = _spectral_summary(df, by)
    if spec is not None and not spec.empty:
        out = out.merge(spec, on=by, how="left") if by else pd.concat([out, spec.reset_index(drop=True)], axis=1)
    return out


def _spectral_summary(df: pd.DataFrame, by: list[str]) -> pd.DataFrame | None:
    try:
        from .metrics import spectral
    except ImportError:
        return None
    if not hasattr(spectral, "summarize") or "spectral_s" not in df.columns:
        return None
    return spectral.summarize(df, by)


def aggregate_pairs(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Cross-run figures per group of `by` (always including run_a, run_b) from per-tensor pair rows."""
    keys = ["run_a", "run_b"] + [k for k in by if k not in ("run_a", "run_b")]
    if df.empty:
        return pd.DataFrame(columns=keys)
    cols = ["dot", "n_compared", "n_sign_agree"] + [f"{p}_{c}" for c in pw.CONVS
                                                   for p in ("n_changed_a", "n_changed_b", "n_both", "expected_both")]
    w = df[keys + cols].copy()
    w["ss_a"] = df["delta_fro_a"] ** 2
    w["ss_b"] = df["delta_fro_b"] ** 2
    w["n_tensors"] = 1
    s = w.groupby(keys, dropna=False, sort=False, observed=True).sum(numeric_only=True).reset_index()
    rows = []
    for _, r in s.iterrows():
        ps = pw.PairSums(used=int(r["n_compared"]), dot=r["dot"], ss_a=r["ss_a"], ss_b=r["ss_b"],
                         both_exact=int(r["n_both_exact"]), both_atol=int(r["n_both_atol"]),
                         both_rtol=int(r["n_both_rtol"]), sign_agree=int(r["n_sign_agree"]))
        ca = {c: int(r[f"n_changed_a_{c}"]) for c in pw.CONVS}
        cb = {c: int(r[f"n_changed_b_{c}"]) for c in pw.CONVS}
        exp = {c: float(r[f"expected_both_{c}"]) for c in pw.CONVS}
        rows.append({**{k: r[k] for k in keys}, **pw.finalize_pair(ps, ca, cb, exp, int(r["n_compared"])),
                     "n_tensors": int(r["n_tensors"])})
    return pd.DataFrame(rows)
