"""Spectral figures of a group of tensors: medians over its 2-D tensors (torch-free).

The aggregates (`updelta.tables.aggregate`) call `summarize`. Stacked experts reach the tables as one
2-D row per expert (docs/experts.md), so each expert is one tensor here. Which columns are medians, and of which kind (float or int), is declared in
`updelta.metrics.schema` (`agg="median_2d"`). Definitions: docs/metrics.md.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from updelta.metrics import schema

NULL_IS_INF = {"energy_rank_90", "energy_rank_99"}  # null means "> k": +inf for medians


def median(vals: list, kind: str, null_is_inf: bool):
    """Median of `vals` (None = missing). Int kind: the lower median, so it stays an integer. With
    `null_is_inf`, None counts as +inf and a +inf median is None ("> k"); otherwise Nones are left out."""
    if kind == "int":
        xs = [math.inf if v is None else v for v in vals] if null_is_inf else [v for v in vals if v is not None]
        if not xs:
            return None
        xs = sorted(xs)
        v = xs[(len(xs) - 1) // 2]  # lower median
        return None if v == math.inf else int(v)
    xs = [math.inf if v is None else float(v) for v in vals] if null_is_inf else \
        [float(v) for v in vals if v is not None]
    if not xs:
        return None
    v = float(np.median(xs))
    return None if math.isinf(v) else v


def _ndim(df: pd.DataFrame) -> pd.Series | None:
    if "ndim" in df.columns:
        return df["ndim"].astype("float64")
    if "shape" in df.columns:
        def nd(s):
            if isinstance(s, str):  # "AxB" of results saved by updelta 0.1.0 and hand-made tables
                return float(len(s.split("x"))) if "x" in s else 1.0
            try:
                return float(len(s))
            except TypeError:
                return math.nan
        return df["shape"].map(nd)
    return None


def summarize(tensors: pd.DataFrame, by: list[str], leave_out: pd.Series | None = None) -> pd.DataFrame:
    """Per-group medians over 2-D tensors of the numeric spectral columns, for the whole-model and
    per-component spectral figures ("medians over 2-D tensors"; every expert is its own 2-D row).

    `leave_out` (bool per row, e.g. `updelta.tables.aggregate.unchanged`): 2-D tensors left out of the medians and
    counted in `n_spectral_unchanged` (an unchanged tensor has energy ranks 0 and no stable rank: counting it
    would pull the median rank of a partly changed group to 0; docs/metrics.md, Aggregates).

    Group keys `by` (e.g. ["run", "component"] or ["run"]; [] for one row). Float columns: the median
    over the tensors that have a value. Int columns (`energy_rank_*`, `intruders`): the lower median,
    so they stay integers (nullable Int64); a null energy rank means "> k" and counts as +inf, so the
    median is null ("> k") when at least half the tensors did not reach q within k.
    Also: `n_spectral` (tensors in the medians), `n_spectral_unchanged` (2-D tensors left out), `n_spectral_skipped` (1-D/0-D tensors in the
    group: no spectral figures by definition) and `spectral_s_total` (seconds summed).
    2-D/3-D tensors are told apart by an `ndim` column, else by the `shape` column (a list of ints, or
    the "AxB" text of older results), else by a non-null `spectral_s`."""
    df = tensors
    kinds = {c.name: c.dtype for c in schema.COLUMNS.values() if c.agg == "median_2d"}
    num = [c for c in kinds if c in df.columns]
    nd = _ndim(df)
    has = df["spectral_s"].notna() if "spectral_s" in df.columns else pd.Series(False, index=df.index)
    spec = has & (nd >= 2) if nd is not None else has
    skipped = (nd < 2) if nd is not None else ~has
    out_mask = leave_out.reindex(df.index).fillna(False).astype(bool) if leave_out is not None else \
        pd.Series(False, index=df.index)
    left = spec & out_mask
    spec = spec & ~out_mask
    keys = list(by)
    groups = df.groupby(keys, dropna=False, sort=False, observed=True) if keys else [((), df)]
    rows = []
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(keys, key))
        sg = g[spec.loc[g.index]]
        for c in num:
            vals = [None if pd.isna(v) else v for v in sg[c].tolist()]
            row[c] = median(vals, kinds[c], c in NULL_IS_INF) if vals else None
        row["n_spectral"] = int(len(sg))
        row["n_spectral_unchanged"] = int(left.loc[g.index].sum())
        row["n_spectral_skipped"] = int(skipped.loc[g.index].sum())
        row["spectral_s_total"] = float(sg["spectral_s"].sum()) if "spectral_s" in sg else 0.0
        rows.append(row)
    out = pd.DataFrame(rows, columns=keys + num + ["n_spectral", "n_spectral_unchanged", "n_spectral_skipped",
                                                   "spectral_s_total"])
    for c in num:
        out[c] = out[c].astype("Int64" if kinds[c] == "int" else "float64")
    return out
