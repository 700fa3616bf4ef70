"""Aggregate per-tensor rows into per-layer, per-component and whole-model figures.

Done correctly (docs/metrics.md): every figure is recomputed from summed raw sums (norms from
sums of squares, cosines from summed dot products, sparsity and mean |D| from element counts)
by the formulas declared in `updelta.metrics.schema` - the same code that computes each tensor's own
row - never averages of ratios. What each column does is declared once, in `updelta.metrics.schema`.

One rule for medians (docs/metrics.md, Aggregates): spectral figures (`metrics.summary.summarize`) and the
concentration columns are medians over the group's **changed** tensors that have a value. A tensor whose every
compared element is unchanged (W1 == W0, `unchanged`) has no update to describe: its energy ranks would read 0
and its stable rank is undefined, so counting it would make a merged rank-8 LoRA on q and v print a median
attention rank of 0. Unchanged tensors are counted in `n_unchanged` (and, among 2-D tensors, in
`n_spectral_unchanged`); null values (1-D tensors have no spectrum) in `n_spectral_skipped`. Sums (norms,
sparsity) count every tensor, unchanged or not. A run whose every tensor is unchanged is listed by
`unchanged_runs` and drawn and reported once as "bit-identical to the base".

Every table's `layer` (and `expert`) column is a nullable integer (pandas `Int64`): null for tensors outside
the layers (embeddings, final norm, head), so that layers sort 0, 1, 2, ..., 10.

Tower tensors (vision encoders, projectors: the `tower` column) are counted only with the `towers`
option (`counted`, docs/families.md, Towers).

Tables without the raw-sum columns (results saved by updelta 0.1.0, hand-made tables): the sums
are rebuilt from the ratio columns first (`sums_from_ratios`), which is exact up to rounding.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from updelta.metrics import schema
from updelta.metrics.summary import summarize
from updelta.metrics.sums import pair_row

CHEAP = list(schema.CHEAP)

# Rebuilding a raw sum from the ratio columns of an older table: sum = f(ratios); NaN ratios (undefined
# figures) come from zero sums.
_FROM_RATIOS = {
    "ss_delta": lambda d: d["delta_fro"] ** 2,
    "ss_base": lambda d: d["base_fro"] ** 2,
    "dot_delta_base": lambda d: d["cos_delta_base"] * d["delta_fro"] * d["base_fro"],
    "sum_abs_delta": lambda d: d["delta_mean_abs"] * d["n_compared"],
    "n_eq": lambda d: d["sparsity_exact"] * d["n_compared"],
    "n_le_atol": lambda d: d["sparsity_atol"] * d["n_compared"],
    "n_le_rtol": lambda d: d["sparsity_rtol"] * d["n_compared"],
    "ss_delta_a": lambda d: d["delta_fro_a"] ** 2,
    "ss_delta_b": lambda d: d["delta_fro_b"] ** 2,
}


def sums_from_ratios(df: pd.DataFrame, names) -> pd.DataFrame:
    """`df` with each missing raw-sum column of `names` rebuilt from the ratio columns (older results)."""
    missing = [c for c in names if c not in df.columns and c in _FROM_RATIOS]
    if not missing:
        return df
    d = df.assign(n_compared=df["n_compared"].astype("float64")) if "n_compared" in df else df
    return df.assign(**{c: _FROM_RATIOS[c](d).fillna(0.0) for c in missing})


def towers_included(meta: dict | None) -> bool:
    """Whether a result's aggregates count tower tensors (the `towers` option it was computed with)."""
    opts = (meta or {}).get("options") or {}
    return bool(opts.get("towers", False)) if isinstance(opts, dict) else False


def counted(df: pd.DataFrame, towers: bool = False) -> pd.DataFrame:
    """The rows of a per-tensor or pair table that the aggregates count: the text model's (`tower` null), every
    row when `towers` or when the table has no `tower` column (docs/families.md, Towers)."""
    if towers or df.empty or "tower" not in df.columns:
        return df
    return df[df["tower"].isna()]


def tower_counts(rows) -> dict[str, int]:
    """{tower: number of distinct tensors} among the tower rows of a per-tensor table or of a list of records
    ({} for a text-only model)."""
    if isinstance(rows, pd.DataFrame):
        if rows.empty or "tower" not in rows.columns:
            return {}
        t = rows[rows["tower"].notna()]
        return {str(k): int(v) for k, v in t.groupby("tower", sort=True)["name"].nunique().items()}
    names: dict[str, set] = {}
    for r in rows:
        if r.get("tower") is not None:
            names.setdefault(str(r["tower"]), set()).add(r.get("name"))
    return {k: len(names[k]) for k in sorted(names)}


def towers_note(rows, towers: bool = False) -> str | None:
    """The warning that tower tensors were left out of the aggregates (None when none were or `towers`)."""
    counts = tower_counts(rows)
    if towers or not counts:
        return None
    what = ", ".join(f"{k} {v}" for k, v in counts.items())
    return (f"{sum(counts.values())} tensor(s) of towers ({what}) are per-tensor rows only, left out of the "
            f"whole-model, component and layer figures and of gates; pass --towers (towers=True) to count them")


def unchanged(df: pd.DataFrame) -> pd.Series:
    """Per row of a per-tensor table: True when the tensor did not change (ΣD² = 0 and, where counted, every
    compared element equal: n_eq == n_compared). Tables without ss_delta use delta_fro."""
    if df.empty:
        return pd.Series(False, index=df.index, dtype=bool)
    ss = df["ss_delta"] if "ss_delta" in df.columns else (df["delta_fro"] ** 2 if "delta_fro" in df.columns else None)
    if ss is None:
        return pd.Series(False, index=df.index, dtype=bool)
    out = pd.to_numeric(ss, errors="coerce").fillna(1.0).eq(0.0)
    if "n_eq" in df.columns and "n_compared" in df.columns:
        eq = pd.to_numeric(df["n_eq"], errors="coerce")
        out &= eq.isna() | eq.eq(pd.to_numeric(df["n_compared"], errors="coerce"))
    return out.astype(bool)


def unchanged_runs(tensors: pd.DataFrame, towers: bool = False) -> list[str]:
    """The runs of a per-tensor table whose every (counted) tensor is unchanged, in table order: runs that are
    bit-identical to the base as far as the compared tensors go."""
    t = counted(tensors, towers)
    if t.empty or "run" not in t.columns:
        return []
    u = unchanged(t)
    return [str(r) for r, v in u.groupby(t["run"].astype(str), sort=False).all().items() if v]


def int_keys(df: pd.DataFrame) -> pd.DataFrame:
    """`layer` and `expert` as nullable integers (Int64), whatever the grouping made of them."""
    for k in ("layer", "expert"):
        if k in df.columns and str(df[k].dtype) != "Int64":
            df[k] = pd.to_numeric(df[k], errors="coerce").astype("Int64")
    return df


def _summed(df: pd.DataFrame, by: list[str], cols: list[str], maxes: list[str] = ()) -> pd.DataFrame:
    """Per group of `by`: the sum of `cols`, the max of `maxes` and `n_tensors`; group keys as columns."""
    w = df[by + cols + list(maxes)].assign(n_tensors=1)
    if not by:
        w = w.assign(_all=0)
    g = w.groupby(by or ["_all"], dropna=False, sort=False, observed=True)
    spec = {**{c: (c, "sum") for c in cols + ["n_tensors"]}, **{c: (c, "max") for c in maxes}}
    s = g.agg(**spec).reset_index()
    return s.drop(columns=["_all"]) if not by else s


def aggregate_tensors(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """One row per group of `by` (e.g. ["run"], ["run", "component"], ["run", "layer", "component"])."""
    if df.empty:
        return int_keys(pd.DataFrame(columns=by + CHEAP + ["numel", "n_tensors", "n_unchanged"]))
    summed = list(schema.columns(schema.AGGREGATES, agg="sum"))
    df = sums_from_ratios(df, schema.RAW_SUMS)
    if "added_rows" not in df:
        df = df.assign(added_rows=0)
    same = unchanged(df)
    df = df.assign(n_unchanged=same.astype("int64"))
    s = _summed(df, by, summed + ["n_unchanged"], ["delta_max"])
    derived = schema.derive({c: s[c].to_numpy() for c in summed}, schema.TENSORS)
    out = s[by].copy()
    for c in ("delta_fro", "base_fro", "rel_delta"):
        out[c] = derived[c]
    out["delta_max"] = s["delta_max"].to_numpy()
    for c in derived:
        if c not in out:
            out[c] = derived[c]
    for c in ("numel", "n_compared", "n_tensors", "n_unchanged", "nonfinite_base", "nonfinite_ft", "added_rows"):
        out[c] = s[c].astype("int64").to_numpy()
    for c in schema.RAW_SUMS:  # int64 / float64 (floats where rebuilt from ratios)
        if c not in out:
            out[c] = s[c].to_numpy()
    out = _null_counts(df, by, out)
    med = [c for c in schema.columns(schema.AGGREGATES, agg="median") if c in df.columns]
    if med:  # concentration columns: medians over the changed tensors with a value (docs/metrics.md)
        w = df[by + med].copy()
        w.loc[same.to_numpy(), med] = np.nan
        m = w.groupby(by, dropna=False, sort=False)[med].median() if by else w[med].median().to_frame().T
        out = out.merge(m.reset_index(), on=by, how="left") if by else pd.concat(
            [out.reset_index(drop=True), m.reset_index(drop=True)], axis=1)
    if "spectral_s" in df.columns:
        spec = summarize(df, by, leave_out=same)
        if not spec.empty:
            out = out.merge(spec, on=by, how="left") if by else pd.concat([out, spec.reset_index(drop=True)], axis=1)
    return int_keys(out)


def _null_counts(df: pd.DataFrame, by: list[str], out: pd.DataFrame) -> pd.DataFrame:
    """Rows without sparsity counts (null n_eq: adapter factors, docs/adapters.md) are left out of each sparsity
    figure, numerator and denominator (the elements of the rows that have the count); `n_sparsity_null` says how many
    tensors that was. Tables without such rows are returned unchanged."""
    convs = [(c, s) for c, s in zip(schema.CONVS, ("n_eq", "n_le_atol", "n_le_rtol")) if s in df.columns]
    if not any(df[s].isna().any() for _, s in convs):
        return out
    extra = {}
    for c, s in convs:
        extra[f"_den_{c}"] = df["n_compared"].where(df[s].notna(), 0)
    w = df[by].assign(**extra, n_sparsity_null=df["n_eq"].isna().astype("int64"),
                      **{s: df[s].astype("float64") for _, s in convs})
    cols = list(extra) + ["n_sparsity_null"] + [s for _, s in convs]
    g = _summed(w, by, cols)
    for c, s in convs:
        num, den = g[s].to_numpy(dtype="float64"), g[f"_den_{c}"].to_numpy(dtype="float64")
        out[f"sparsity_{c}"] = schema.FORMULAS["ratio"](num, den)
        out[s] = np.where(den > 0, num, np.nan)
    out["n_sparsity_null"] = g["n_sparsity_null"].astype("int64").to_numpy()
    return out


def aggregate_pairs(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Cross-run figures per group of `by` (always including run_a, run_b) from per-tensor pair rows."""
    keys = ["run_a", "run_b"] + [k for k in by if k not in ("run_a", "run_b")]
    if df.empty:
        return int_keys(pd.DataFrame(columns=keys))
    df = sums_from_ratios(df, schema.PAIR_SUMS)
    s = _summed(df, keys, list(schema.PAIR_SUMS))
    raw = {c: s[c].to_numpy() for c in schema.PAIR_SUMS}
    row = pair_row(raw, schema.derive(raw, schema.PAIRS))
    out = s[keys].copy()
    for c, v in row.items():
        out[c] = v
    out["n_tensors"] = s["n_tensors"].astype("int64").to_numpy()
    return int_keys(out)


SPARSITY_NA = ("n/a: the adapter's updated tensors have no sparsity counts (D is never stored; docs/adapters.md, "
               "`--merge-dtype`)")


def sparsity_left_out(row) -> tuple[int, bool]:
    """(tensors left out of an aggregate row's sparsity figures for lack of counts, whether every changed tensor of
    the row is among them). In the second case the figure counts unchanged tensors only and says nothing about the
    update: renderers print n/a; in the first they say on the same line how many tensors were left out."""
    get = row.get if hasattr(row, "get") else (lambda k, d=None: getattr(row, k, d))
    n = get("n_sparsity_null", 0)
    n = 0 if n is None or pd.isna(n) else int(n)
    if n == 0:
        return 0, False
    tensors, same = get("n_tensors", None), get("n_unchanged", None)
    if tensors is None or same is None or pd.isna(tensors) or pd.isna(same):
        return n, False
    return n, n >= int(tensors) - int(same)


def sparsity_cell(text: str, row) -> str:
    """A formatted sparsity figure of an aggregate row, with what it leaves out (`sparsity_left_out`): the text
    itself, `n/a`, or `98.10% (4 tensors n/a)`."""
    n, every = sparsity_left_out(row)
    if n == 0:
        return text
    return "n/a" if every else f"{text} ({n} tensor{'s' if n != 1 else ''} n/a)"


def sparsity_note(row) -> str | None:
    """What an aggregate row's sparsity figures leave out, in words (JSON, reports); None when nothing is."""
    n, every = sparsity_left_out(row)
    if n == 0:
        return None
    if every:
        return (f"n/a: every changed tensor ({n}) has no sparsity counts (adapter factors; docs/adapters.md); the "
                f"sparsity figures count unchanged tensors only and say nothing about the update")
    return f"{n} tensor{'s' if n != 1 else ''} without sparsity counts (adapter factors) left out of the sparsity figures"


def noted_records(df: pd.DataFrame, records: list[dict]) -> list[dict]:
    """`records` (one per row of the aggregate `df`) with `sparsity_note` added where a row's sparsity figures leave
    tensors out (`sparsity_note`)."""
    if "n_sparsity_null" not in df.columns:
        return records
    out = []
    for rec, (_, row) in zip(records, df.iterrows()):
        note = sparsity_note(row)
        out.append({**rec, "sparsity_note": note} if note else rec)
    return out
