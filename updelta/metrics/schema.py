"""The column schema: one declaration per column of every result table.

Tables (`Column.tables`):
- `tensors`: one row per (run, tensor) (`Result.tensors`);
- `pairs`: one row per (pair of runs, tensor) (`Result.pairs`);
- `aggregates`: per-run groups of tensors (`Result.summary`, `components`, `layers`);
- `pair_aggregates`: per-pair groups (`Result.pairs_summary`, `pairs_components`, `pairs_layers`).

Kinds (`Column.kind`): `id` (names, keys), `count` (element or tensor counts), `sum` (a raw
partial sum of the fused pass: float64 or int64, exactly what the kernel returns), `metric` (a
cheap or cross-run figure), `spectral`, `meta` (descriptive: dtypes, flags, lists).

How a column aggregates over tensors (`Column.agg`): `key` (a group key), `sum`, `max`,
`formula` (recomputed from the summed raw sums by `Column.formula`, see `FORMULAS`), `median_2d`
(median over the group's changed 2-D tensors, `metrics.summary.summarize`), `median` (median over the changed
tensors with a value: the concentration columns, which a gate uses only with an explicit AGG), `size` (number of tensors),
`none` (not aggregated). Every per-tensor figure is itself the same formula of the tensor's own
sums, so per-tensor and aggregated numbers are computed one way (`derive`). Every median leaves out unchanged
tensors (W1 == W0) and counts them in `n_unchanged` / `n_spectral_unchanged` (docs/metrics.md, Aggregates).

Definitions of the metrics: docs/metrics.md. Nothing here imports torch or pandas.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from updelta.families.naming import components as family_components
from updelta.options import DiffOptions

TENSORS, PAIRS, AGGREGATES, PAIR_AGGREGATES = "tensors", "pairs", "aggregates", "pair_aggregates"
KINDS = ("id", "count", "sum", "metric", "spectral", "meta")
AGGS = ("key", "sum", "max", "formula", "median_2d", "median", "size", "none")

# Sparsity conventions: what "unchanged" means, with the result's tolerances (docs/metrics.md, Update sparsity).
CONVS = ("exact", "atol", "rtol")
CONVENTION_TEXT = {"exact": "W1 == W0", "atol": "|ΔW| ≤ {atol:g}", "rtol": "|ΔW| ≤ {eta:g}·max(|W0|,|W1|)"}
DEFAULT_ATOL, DEFAULT_ETA = DiffOptions.atol, DiffOptions.eta  # declared once, in options.py


@dataclass(frozen=True)
class Column:
    """One column: where it lives, what it is, its unit and labels, and how it aggregates."""

    name: str
    tables: tuple[str, ...]
    kind: str
    agg: str
    unit: str = ""
    label: str = ""  # axis / colour-bar label with unit (plots); may hold {conv} / {changed}
    title: str = ""  # longer description (figure titles); may hold {conv} / {changed}
    header: str = ""  # column header in terminal tables (default: the name)
    fmt: str = "g"  # how text and reports print it: g, pct, int
    formula: tuple[str, ...] = ()  # (op, input, ...) for agg == "formula"; ops in FORMULAS
    dtype: str = ""  # float, int, str, bool, list (spectral: the kind the spectral code uses)
    mode: str = ""  # spectral columns: fast, full, timing
    gate: bool = False  # usable as a gate metric

    def in_table(self, table: str) -> bool:
        return table in self.tables


_T, _P, _A, _PA = (TENSORS,), (PAIRS,), (AGGREGATES,), (PAIR_AGGREGATES,)
_TA, _PPA = (TENSORS, AGGREGATES), (PAIRS, PAIR_AGGREGATES)
_ALL = (TENSORS, PAIRS, AGGREGATES, PAIR_AGGREGATES)


def _c(name, tables, kind, agg, **kw) -> Column:
    if kind in ("metric", "count") and "gate" not in kw:
        kw["gate"] = True
    return Column(name, tuple(tables), kind, agg, **kw)


_W = "weight units"
_CHANGED = {"jaccard": "mask Jaccard |A∩B|/|A∪B|", "overlap_a": "overlap |A∩B|/|A|", "overlap_b": "overlap |A∩B|/|B|"}

_IDS = [
    _c("run", _TA, "id", "key", dtype="str"),
    _c("run_a", _PPA, "id", "key", dtype="str"),
    _c("run_b", _PPA, "id", "key", dtype="str"),
    _c("name", (TENSORS, PAIRS), "id", "none", dtype="str"),
    _c("layer", _ALL, "id", "key", dtype="int"),
    _c("expert", _ALL, "id", "key", dtype="int"),  # routed expert index (docs/experts.md); null for the rest
    _c("component", _ALL, "id", "key", dtype="str"),
    _c("module", (TENSORS, PAIRS), "id", "none", dtype="str"),
    _c("param", (TENSORS, PAIRS), "id", "none", dtype="str"),
    _c("tower", _ALL, "id", "key", dtype="str"),  # None: text model; aggregates only with DiffOptions.towers
    _c("shape", _T, "meta", "none", dtype="list", unit="elements per axis"),
    _c("numel", (TENSORS, PAIRS, AGGREGATES), "count", "sum", dtype="int", unit="elements",
       label="elements (count)", title="tensor size", fmt="int"),
    _c("dtype_base", _T, "meta", "none", dtype="str"),
    _c("dtype_ft", _T, "meta", "none", dtype="str"),
    _c("resized", _T, "meta", "none", dtype="bool"),
    _c("added_rows", _TA, "count", "sum", dtype="int", unit="rows", fmt="int"),
    _c("added_fro", _T, "metric", "none", dtype="float", unit=_W),
    _c("tied", _T, "meta", "none", dtype="bool"),
    # Result.summary only: the path of the checkpoint the run was measured from (its own base or the common one;
    # docs/inputs.md, Per-run bases); not a group key.
    _c("base", _A, "meta", "none", dtype="str", title="the checkpoint the run was measured from"),
]

class BlockSums(NamedTuple):
    """One block's partial sums of one run against the base: the record the C kernel (through its one adapter,
    `scan.jobs.kernel`), the torch reference (`metrics.elementwise.partial_sums`) and the adapter path return, and
    `metrics.sums.Sums` adds up. The field order is the C kernel's tuple order (`_ext/fused.c`, `stats_tuple`);
    `SUM_COLUMNS` names the column each field is kept as (docs/architecture.md, "Where to add a raw sum")."""

    used: int  # element pairs with both values finite
    nonfinite_base: int
    nonfinite_ft: int
    ss_d: float  # sum D^2
    ss_base: float  # sum W0^2
    dot: float  # sum D * W0
    sum_abs: float  # sum |D|
    max_abs: float  # max |D| (combined by max, not kept as a sum column)
    eq: int  # W1 == W0
    le_atol: int  # |D| <= atol
    le_rtol: int  # |D| <= eta * max(|W0|, |W1|)


class PairBlockSums(NamedTuple):
    """One block's partial sums of one pair of runs (C kernel `pair`, `metrics.pairwise.pair_partial_sums`)."""

    used: int
    dot: float  # sum D_a * D_b
    ss_a: float
    ss_b: float
    both_exact: int  # changed in both runs, per convention
    both_atol: int
    both_rtol: int
    sign_agree: int  # both changed (exact) with the same sign


# BlockSums field -> its raw-sum column (the fields combined by max are not columns: `delta_max` is derived).
SUM_COLUMNS = {"used": "n_compared", "nonfinite_base": "nonfinite_base", "nonfinite_ft": "nonfinite_ft",
               "ss_d": "ss_delta", "ss_base": "ss_base", "dot": "dot_delta_base", "sum_abs": "sum_abs_delta",
               "eq": "n_eq", "le_atol": "n_le_atol", "le_rtol": "n_le_rtol"}
MAX_FIELDS = ("max_abs",)


def field_types(record: type) -> dict[str, type]:
    """{field: int or float} of a partial-sum record class (its annotations, resolved)."""
    return {f: (int if typing.get_type_hints(record)[f] is int else float) for f in record._fields}


# Raw partial sums of the fused pass (metrics.sums.Sums), kept per tensor so that every aggregate is
# recomputed from sums.
_CHEAP_SUMS = [
    _c("ss_delta", _TA, "sum", "sum", dtype="float", unit=f"({_W})^2", title="sum of D^2"),
    _c("ss_base", _TA, "sum", "sum", dtype="float", unit=f"({_W})^2", title="sum of W0^2"),
    _c("dot_delta_base", _TA, "sum", "sum", dtype="float", unit=f"({_W})^2", title="sum of D * W0"),
    _c("sum_abs_delta", _TA, "sum", "sum", dtype="float", unit=_W, title="sum of |D|"),
    _c("n_eq", _TA, "sum", "sum", dtype="int", unit="elements", title="elements with W1 == W0"),
    _c("n_le_atol", _TA, "sum", "sum", dtype="int", unit="elements", title="elements with |D| <= atol"),
    _c("n_le_rtol", _TA, "sum", "sum", dtype="int", unit="elements",
       title="elements with |D| <= eta * max(|W0|, |W1|)"),
]

_CHEAP = [
    _c("delta_fro", _TA, "metric", "formula", formula=("sqrt", "ss_delta"), dtype="float", unit=_W,
       label=r"$\|\Delta W\|_F$ (weight units)", title="update norm"),
    _c("base_fro", _TA, "metric", "formula", formula=("sqrt", "ss_base"), dtype="float", unit=_W,
       label=r"$\|W_0\|_F$ (weight units)", title="base norm"),
    _c("rel_delta", _TA, "metric", "formula", formula=("ratio", "delta_fro", "base_fro"), dtype="float",
       unit="ratio", label=r"$\|\Delta W\|_F\,/\,\|W_0\|_F$ (ratio)", title="relative update size"),
    _c("delta_max", _TA, "metric", "max", dtype="float", unit=_W, label=r"max $|\Delta W|$ (weight units)",
       title="largest element change"),
    _c("delta_mean_abs", _TA, "metric", "formula", formula=("ratio", "sum_abs_delta", "n_compared"),
       dtype="float", unit=_W, label=r"mean $|\Delta W|$ (weight units)", title="mean element change"),
    _c("cos_delta_base", _TA, "metric", "formula", formula=("cosine", "dot_delta_base", "delta_fro", "base_fro"),
       dtype="float", unit="cosine", label=r"cos($\Delta W$, $W_0$) (−1…1)", header="cos(D,W0)",
       title="direction of the update relative to the base weights"),
    *[_c(f"sparsity_{c}", _TA, "metric", "formula", formula=("ratio", s, "n_compared"), dtype="float",
         unit="share", label=f"sparsity, {c} (share unchanged)", title="share unchanged, {conv}",
         header=f"sparse {c}", fmt="pct")
      for c, s in zip(CONVS, ("n_eq", "n_le_atol", "n_le_rtol"))],
    _c("n_compared", (TENSORS, PAIRS, AGGREGATES, PAIR_AGGREGATES), "count", "sum", dtype="int", unit="elements",
       fmt="int", title="element pairs with both values finite"),
    _c("nonfinite_base", _TA, "count", "sum", dtype="int", unit="elements", fmt="int"),
    _c("nonfinite_ft", _TA, "count", "sum", dtype="int", unit="elements", fmt="int"),
    _c("n_tensors", (AGGREGATES, PAIR_AGGREGATES), "count", "size", dtype="int", unit="tensors", fmt="int"),
    _c("n_unchanged", _A, "count", "none", dtype="int", unit="tensors", fmt="int", gate=False,
       title="tensors of the group with every compared element unchanged (W1 == W0): counted in the sums, left out "
             "of every median (docs/metrics.md, Aggregates)"),
    _c("n_sparsity_null", _A, "count", "none", dtype="int", unit="tensors", fmt="int", gate=False,
       title="tensors without sparsity counts (adapter factors without --merge-dtype), left out of the sparsity "
             "figures, whose denominators count only the tensors with counts (docs/adapters.md)"),
    _c("hist", _T, "meta", "none", dtype="list", unit="elements per |D| exponent bin"),
]


def _pair_conv(c: str) -> list[Column]:
    out = []
    for p, what in (("jaccard", "n_changed_b"), ("jaccard_random", None), ("overlap_a", None),
                    ("overlap_a_random", None), ("overlap_b", None), ("overlap_b_random", None)):
        both = f"expected_both_{c}" if p.endswith("_random") else f"n_both_{c}"
        if p.startswith("jaccard"):
            formula = ("jaccard", both, f"n_changed_a_{c}", f"n_changed_b_{c}")
        else:
            formula = ("ratio", both, f"n_changed_{p[8]}_{c}")
        if p in _CHANGED:
            label, title = f"{_CHANGED[p]}, {c} (share)", f"{_CHANGED[p]} (changed: {{changed}})"
        else:
            label, title = f"{p}, {c} (share)", f"{p} (changed: {{changed}})"
        out.append(_c(f"{p}_{c}", _PPA, "metric", "formula", formula=formula, dtype="float", unit="share",
                      label=label, title=title))
    out += [_c(f"n_changed_a_{c}", _PPA, "sum", "sum", dtype="int", unit="elements",
               title=f"elements changed in run a ({c})"),
            _c(f"n_changed_b_{c}", _PPA, "sum", "sum", dtype="int", unit="elements",
               title=f"elements changed in run b ({c})"),
            _c(f"n_both_{c}", _PPA, "sum", "sum", dtype="int", unit="elements",
               title=f"elements changed in both runs ({c})"),
            _c(f"expected_both_{c}", _PPA, "sum", "sum", dtype="float", unit="elements",
               title=f"expected elements changed in both for independent masks ({c}): sum of n d_a d_b")]
    return out


_PAIR = [
    _c("delta_cos", _PPA, "metric", "formula", formula=("cosine", "dot", "delta_fro_a", "delta_fro_b"),
       dtype="float", unit="cosine", label=r"cos($\Delta W_a$, $\Delta W_b$) (−1…1)",
       title="cosine between the updates of two runs"),
    _c("dot", _PPA, "sum", "sum", dtype="float", unit=f"({_W})^2", title="sum of D_a * D_b"),
    _c("delta_fro_a", _PPA, "meta", "formula", formula=("sqrt", "ss_delta_a"), dtype="float", unit=_W),
    _c("delta_fro_b", _PPA, "meta", "formula", formula=("sqrt", "ss_delta_b"), dtype="float", unit=_W),
    *[col for c in CONVS for col in _pair_conv(c)],
    _c("sign_agree", _PPA, "metric", "formula", formula=("ratio", "n_sign_agree", "n_both_exact"), dtype="float",
       unit="share", label="same-sign share (0…1)", title="sign agreement of elements changed in both runs (exact)",
       fmt="pct"),
    _c("n_sign_agree", _PPA, "sum", "sum", dtype="int", unit="elements",
       title="elements changed in both runs (exact) with deltas of the same sign"),
    _c("ss_delta_a", _PPA, "sum", "sum", dtype="float", unit=f"({_W})^2", title="sum of D_a^2"),
    _c("ss_delta_b", _PPA, "sum", "sum", dtype="float", unit=f"({_W})^2", title="sum of D_b^2"),
]

# Spectral columns (metrics/spectral.py computes them; docs/metrics.md defines them). dtype is the kind the
# spectral code uses: float, int (nullable), list.
INTRUDER_SWEEP = tuple(round(0.1 * i, 1) for i in range(1, 10))  # thresholds of `intruders_sweep`: 0.1 .. 0.9
_SPEC_LABELS = {
    "stable_rank": (r"stable rank $\|\Delta W\|_F^2/\|\Delta W\|_2^2$", "stable rank of the update"),
    "erank": ("effective rank (dimensions)", "effective rank of the update"),
    "energy_rank_90": ("rank for 90% energy (dimensions)", r"rank holding 90% of $\|\Delta W\|_F^2$"),
    "energy_rank_99": ("rank for 99% energy (dimensions)", r"rank holding 99% of $\|\Delta W\|_F^2$"),
    "intruders": ("intruder dimensions (count)", "intruder dimensions (Shuttleworth et al.)"),
}
_SPEC = [  # name, mode, dtype, fmt, header
    ("stable_rank", "fast", "float", "g", ""), ("topk_sv", "fast", "list", "g", ""),
    ("topk_energy", "fast", "float", "g", ""), ("energy_rank_90", "fast", "int", "g", "r90"),
    ("energy_rank_99", "fast", "int", "g", "r99"), ("topk_sv_err_est", "fast", "float", "g", ""),
    ("rank_frac", "full", "float", "pct", ""), ("erank", "full", "float", "g", ""), ("nss", "full", "float", "g", ""),
    ("principal_cos_u", "full", "list", "g", ""), ("principal_cos_v", "full", "list", "g", ""),
    ("angle_u_max_deg", "full", "float", "g", ""), ("angle_v_max_deg", "full", "float", "g", ""),
    ("offprincipal_overlap", "full", "float", "pct", ""), ("offprincipal_chance", "full", "float", "pct", ""),
    ("intruders", "full", "int", "g", ""), ("intruders_sweep", "full", "list", "g", ""),
    ("spectral_s", "timing", "float", "g", ""),
]


def _spectral_column(name, mode, dtype, fmt, header) -> Column:
    scalar = dtype in ("float", "int")  # medians over 2-D tensors in the aggregates
    label, title = _SPEC_LABELS.get(name, ("", ""))
    return _c(name, _TA if scalar else _T, "spectral", "median_2d" if scalar else "none", dtype=dtype, mode=mode,
              fmt=fmt, header=header, label=label, title=title, unit="seconds" if mode == "timing" else "",
              gate=mode in ("fast", "full") and name != "topk_sv_err_est")


_SPECTRAL = [_spectral_column(*s) for s in _SPEC] + [
    _c("n_spectral", _A, "spectral", "none", dtype="int", unit="tensors", fmt="int",
       title="changed 2-D tensors in the spectral medians (stacked experts are split into 2-D rows)"),
    _c("n_spectral_unchanged", _A, "spectral", "none", dtype="int", unit="tensors", fmt="int",
       title="unchanged 2-D tensors (W1 == W0) left out of the spectral medians (docs/metrics.md, Aggregates)"),
    _c("n_spectral_skipped", _A, "spectral", "none", dtype="int", unit="tensors", fmt="int",
       title="1-D / 0-D tensors (no spectral figures by definition)"),
    _c("spectral_s_total", _A, "spectral", "none", dtype="float", unit="seconds", title="spectral seconds, summed"),
]

# Where an update sits (metrics/concentration.py; docs/metrics.md, Where an update sits): concentration of the row
# energies e_i = ||D[i, :]||^2 and column energies f_j = ||D[:, j]||^2 of every 2-D update ([out, in]). Their
# aggregates are medians over the group's tensors with a value; a gate on them needs an explicit AGG.
_AXIS = {"row": "rows", "col": "columns"}
_WHERE = [col for a, w in _AXIS.items() for col in (
    _c(f"{a}_top1_share", _TA, "metric", "median", dtype="float", unit="share", fmt="pct",
       label=f"share of update energy in the top 1% of {w}", title=f"update energy in the top 1% of {w}"),
    _c(f"{a}_top10_share", _TA, "metric", "median", dtype="float", unit="share", fmt="pct",
       label=f"share of update energy in the top 10% of {w}", title=f"update energy in the top 10% of {w}"),
    _c(f"{a}_gini", _TA, "metric", "median", dtype="float", unit="Gini (0 uniform, 1 one)",
       label=f"Gini of the {w[:-1]} energies", title=f"concentration (Gini) of the {w[:-1]} energies"),
    _c(f"{a}s_for_90", _TA, "metric", "median", dtype="int", unit=w,
       label=f"{w} holding 90% of the update energy", title=f"fewest {w} holding 90% of the update energy"),
)]

_ALL_COLUMNS = _IDS + _CHEAP_SUMS + _CHEAP + _PAIR + _SPECTRAL + _WHERE
COLUMNS: dict[str, Column] = {c.name: c for c in _ALL_COLUMNS}
assert len(COLUMNS) == len(_ALL_COLUMNS), "a column is declared twice"
# Columns of the where tables (Result.heads, pairs_heads, neurons): ids first, then figures, then raw sums.
HEAD_COLUMNS = ("run", "layer", "module", "name", "part", "head", "delta_fro", "base_fro", "rel_delta",
                "sparsity_exact", "sparsity_atol", "sparsity_rtol", "energy_share", "ss_delta", "ss_base",
                "n_compared")
PAIR_HEAD_COLUMNS = ("run_a", "run_b", "layer", "module", "name", "part", "head", "delta_cos", "dot",
                     "ss_delta_a", "ss_delta_b")
NEURON_COLUMNS = ("run", "layer", "module", "name", "component", "kind", "axis", "index", "rank", "energy",
                  "energy_share", "token")
# Result.lens (docs/metrics.md, Logit lens of the update): per (run, tensor, direction, sign, rank) one token.
LENS_COLUMNS = ("run", "layer", "module", "name", "direction", "sigma", "resid", "sign", "rank", "token_id",
                "token", "score", "score_mean")

# The headline per-run figures, in the order text summaries and reports show them.
HEADLINE = ("rel_delta", "delta_fro", "delta_max", "cos_delta_base", "sparsity_exact", "sparsity_atol",
            "sparsity_rtol")


def columns(table: str, kind: str | tuple[str, ...] | None = None, agg: str | None = None) -> tuple[str, ...]:
    """Names of the columns of `table` (declaration order), optionally of a kind (or kinds) and aggregation."""
    kinds = (kind,) if isinstance(kind, str) else kind
    return tuple(c.name for c in COLUMNS.values() if table in c.tables and (kinds is None or c.kind in kinds)
                 and (agg is None or c.agg == agg))


# The per-tensor table's leading columns (ids, counts, cheap metrics and raw sums, in this order); hist and
# spectral columns follow.
TENSOR_COLUMNS = [c for c in ("run", "name", "layer", "expert", "component", "module", "param", "tower", "shape", "numel",
                              "dtype_base", "dtype_ft", "resized", "added_rows", "added_fro", "tied", "delta_fro",
                              "base_fro", "rel_delta", "delta_max", "delta_mean_abs", "cos_delta_base", "sparsity_exact",
                              "sparsity_atol", "sparsity_rtol", "n_compared", "nonfinite_base", "nonfinite_ft")] + \
    list(columns(TENSORS, "sum"))
CHEAP = tuple(c for c in columns(TENSORS, "metric") if COLUMNS[c].agg in ("formula", "max"))
RAW_SUMS = columns(TENSORS, "sum")
PAIR_SUMS = columns(PAIRS, "sum") + ("n_compared",)


def spectral_columns(mode: str | None = None) -> dict[str, str]:
    """{name: dtype} of the per-tensor spectral columns (of one `mode`: fast, full, timing)."""
    return {c.name: c.dtype for c in COLUMNS.values() if c.kind == "spectral" and TENSORS in c.tables
            and (mode is None or c.mode == mode)}


def gate_columns(table: str) -> tuple[str, ...]:
    """Numeric columns of `table` a gate may use (spectral ones exist only with --spectral fast/full)."""
    return tuple(c.name for c in COLUMNS.values() if c.gate and table in c.tables)


def fmt_of(name: str) -> str:
    return COLUMNS[name].fmt if name in COLUMNS else "g"


def header_of(name: str) -> str:
    c = COLUMNS.get(name)
    return (c.header or c.name) if c else name


def conventions(atol: float = DEFAULT_ATOL, eta: float = DEFAULT_ETA) -> dict[str, str]:
    """Each sparsity convention's definition of *unchanged* with the given tolerances ("atol: |ΔW| ≤ 1e-05")."""
    return {c: f"{c}: " + CONVENTION_TEXT[c].format(atol=atol, eta=eta) for c in CONVS}


def changed(conv: str, atol: float = DEFAULT_ATOL, eta: float = DEFAULT_ETA) -> str:
    """A convention's definition of *changed* (the complement): "atol: |ΔW| > 1e-05"."""
    return conventions(atol, eta)[conv].replace("≤", ">").replace("==", "!=")


def label(name: str, long: bool = False, atol: float = DEFAULT_ATOL, eta: float = DEFAULT_ETA) -> str:
    """Plot label of a column with its unit (`long`: the description for titles); the name when it has none.
    Sparsity and mask metrics name their convention with the result's tolerances."""
    c = COLUMNS.get(name)
    if c is None or not c.label:
        return name
    text = c.title if long else c.label
    conv = next((k for k in CONVS if name.endswith(f"_{k}")), None)
    if conv is None:
        return text
    return text.format(conv=conventions(atol, eta)[conv], changed=changed(conv, atol, eta))


def shape_text(v) -> str:
    """A stored shape ([16, 16]) as text ("16x16"; "1" for a 0-D tensor)."""
    if isinstance(v, str):
        return v
    try:
        return "x".join(str(int(s)) for s in v) or "1"
    except TypeError:
        return str(v)


def shape_list(v) -> list[int] | None:
    """A shape cell as a list of ints: a list/array, or the "16x16" text of results saved by updelta 0.1.0."""
    if v is None or (isinstance(v, float) and v != v):
        return None
    if isinstance(v, str):
        return [int(s) for s in v.split("x")] if v else []
    return [int(s) for s in v]


# ---- components -------------------------------------------------------------------------------------
def components() -> tuple[str, ...]:
    """The component names, in forward order (embeddings first): family data, `naming.components()`."""

    return family_components()


# ---- formulas -----------------------------------------------------------------------------------------
def _f(x):
    return np.asarray(x, dtype=np.float64)


def _div(num, den, ok):
    with np.errstate(divide="ignore", invalid="ignore"):
        q = _f(num) / _f(den)
    return np.where(ok, q, np.nan)


# op -> function of the inputs (arrays or scalars); NaN where the figure is undefined.
FORMULAS = {
    "sqrt": lambda x: np.sqrt(_f(x)),  # e.g. ||D||_F = sqrt(sum D^2)
    "ratio": lambda num, den: _div(num, den, _f(den) != 0),  # NaN for a zero denominator
    "cosine": lambda dot, a, b: _div(dot, _f(a) * _f(b), _f(a) * _f(b) > 0),  # <x, y> / (||x|| ||y||)
    "jaccard": lambda both, a, b: _div(both, _f(a) + _f(b) - _f(both), _f(a) + _f(b) - _f(both) > 0),
}


def derive(sums, table: str) -> dict:
    """The `formula` columns of `table` from raw sums (a mapping of column -> scalar or array): the same
    code for one tensor and for a group of tensors. Scalars in, Python floats out; arrays in, arrays out."""
    cache = dict(sums)

    def get(name):
        if name not in cache:
            op, *args = COLUMNS[name].formula
            cache[name] = FORMULAS[op](*(get(a) for a in args))
        return cache[name]

    out = {}
    for c in COLUMNS.values():
        if c.agg == "formula" and table in c.tables:
            v = get(c.name)
            out[c.name] = float(v) if np.ndim(v) == 0 else v
    return out
