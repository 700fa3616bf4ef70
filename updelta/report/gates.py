"""Gates: pass/fail conditions on the numbers of a diff or compare, for CI.

Grammar (also in `updelta report --help` and the README):

    [AGG:]METRIC OP VALUE[@SELECTOR]

- METRIC: a column of the result tables, e.g. rel_delta, sparsity_atol, delta_max
  (per-run metrics) or delta_cos, jaccard_atol, sign_agree (cross-run metrics).
- OP: <, <=, >, >=.  VALUE: a number (1e-3, 0.5, 5%).
- Without AGG the gate applies to each run's whole-model value (or, with component=/layer=/
  name= in the selector, to the run's aggregate over the selected tensors: norms from sums of
  squares, sparsity element-weighted). A cross-run metric applies to each pair of runs.
- AGG in max, min, mean applies the gate per run to the max/min/mean of the per-tensor
  values of the selected tensors; the offending tensors are listed.
- SELECTOR: comma-separated items; a bare item is a run name (globs allowed; for a cross-run
  metric it selects pairs that include a matching run, or `a/b` names one pair);
  component=GLOB, layer=N or layer=LO-HI, name=GLOB (tensor name) select tensors. Items with the
  same key are alternatives (OR); different keys must all hold (AND).

Examples: `rel_delta<=0.05`, `sparsity_atol>=0.5@grpo`, `max:rel_delta<=0.2@component=attn`.

A value that is undefined (NaN, e.g. a delta cosine with an unchanged run) fails the gate.
"""
from __future__ import annotations

import fnmatch
import math
import operator
import re
from dataclasses import dataclass, field

from updelta.errors import UpdeltaError
from updelta.metrics import schema

GRAMMAR = ("gate grammar: [AGG:]METRIC OP VALUE[@SELECTOR]; AGG in max, min, mean (over the selected tensors; "
           "without AGG: each run's whole-model value); OP in <, <=, >, >=; SELECTOR: comma-separated run names "
           "(globs allowed) and/or component=GLOB, layer=N|LO-HI, name=GLOB; e.g. rel_delta<=0.05, "
           "sparsity_atol>=0.5@grpo, max:rel_delta<=0.2@component=attn")

OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}
AGGS = ("max", "min", "mean")
SELECTOR_KEYS = ("run", "component", "layer", "name")
COMPONENTS = schema.components()
_GATE_RE = re.compile(r"^\s*(?:(?P<agg>[A-Za-z]+)\s*:)?\s*(?P<metric>[A-Za-z_][A-Za-z0-9_]*)\s*"
                      r"(?P<op><=|>=|<|>)\s*(?P<value>[^@\s<>=]+)\s*(?:@(?P<sel>.*))?$")

# Numeric columns a gate may use, from the schema: per-run (spectral ones depend on --spectral) and cross-run.
RUN_COLUMNS = tuple(c for c in schema.gate_columns(schema.TENSORS) if schema.COLUMNS[c].kind != "spectral")
SPECTRAL_COLUMNS = tuple(c for c in schema.gate_columns(schema.TENSORS) if schema.COLUMNS[c].kind == "spectral")
CONVS = schema.CONVS
PAIR_COLUMNS = tuple(c for c in schema.gate_columns(schema.PAIRS) if schema.COLUMNS[c].kind == "metric")


def _fail(msg: str) -> UpdeltaError:
    return UpdeltaError(f"{msg}; {GRAMMAR}")


@dataclass(frozen=True)
class Selector:
    """What a gate applies to: run globs and tensor filters (empty tuple = no restriction)."""

    runs: tuple[str, ...] = ()
    components: tuple[str, ...] = ()
    layers: tuple[tuple[int, int], ...] = ()
    names: tuple[str, ...] = ()

    @property
    def tensor_filter(self) -> bool:
        return bool(self.components or self.layers or self.names)

    def __str__(self) -> str:
        parts = list(self.runs) + [f"component={c}" for c in self.components]
        parts += [f"layer={a}" if a == b else f"layer={a}-{b}" for a, b in self.layers]
        parts += [f"name={n}" for n in self.names]
        return ",".join(parts)


@dataclass(frozen=True)
class Gate:
    """One parsed gate expression."""

    expr: str
    metric: str
    op: str
    value: float
    agg: str | None = None
    selector: Selector = field(default_factory=Selector)

    def holds(self, x: float) -> bool:
        """Whether value `x` passes; NaN (undefined) never passes."""
        return x is not None and not (isinstance(x, float) and math.isnan(x)) and bool(OPS[self.op](x, self.value))

    @property
    def is_pair(self) -> bool:
        """A cross-run metric (evaluated per pair of runs)."""
        return self.metric in PAIR_COLUMNS


@dataclass
class GateResult:
    """Outcome of one gate: per subject (run or pair) the value and whether it passed, and the offenders."""

    gate: Gate
    rows: list[dict]  # {"subject", "value", "passed"}
    offenders: list[dict]  # {"run" or "pair", "name" (tensor, for AGG max/min), "value"}

    @property
    def passed(self) -> bool:
        return all(r["passed"] for r in self.rows)

    def failed_subjects(self) -> list[str]:
        return [r["subject"] for r in self.rows if not r["passed"]]

    def as_dict(self) -> dict:
        return {"gate": self.gate.expr, "metric": self.gate.metric, "op": self.gate.op, "value": self.gate.value,
                "agg": self.gate.agg, "selector": str(self.gate.selector), "passed": self.passed,
                "results": self.rows, "offenders": self.offenders}

    def describe(self, limit: int = 10) -> str:
        """One line: PASS/FAIL, the gate, and the offending runs/tensors with their values."""
        if self.passed:
            vals = ", ".join(f"{r['subject']} {_num(r['value'])}" for r in self.rows)
            return f"PASS {self.gate.expr}: {vals}"
        offs = [_offender_text(o) for o in self.offenders]
        more = f" (+{len(offs) - limit} more)" if len(offs) > limit else ""
        return f"FAIL {self.gate.expr}: " + "; ".join(offs[:limit]) + more


def _num(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "NaN (undefined)"
    return f"{v:.4g}"


def _offender_text(o: dict) -> str:
    who = o.get("run") or o.get("pair")
    return f"{who} {o['name']} = {_num(o['value'])}" if o.get("name") else f"{who} = {_num(o['value'])}"


# ---- parsing -----------------------------------------------------------------------------------
def _parse_value(s: str, expr: str) -> float:
    try:
        return float(s[:-1]) / 100 if s.endswith("%") else float(s)
    except ValueError:
        raise _fail(f"gate {expr!r}: {s!r} is not a number") from None


def _parse_layer(v: str, expr: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)(?:-(\d+))?", v.strip())
    if not m:
        raise _fail(f"gate {expr!r}: layer={v!r} is not N or LO-HI")
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) is not None else lo
    if hi < lo:
        raise _fail(f"gate {expr!r}: layer={v!r} is an empty range")
    return lo, hi


def _parse_selector(s: str, expr: str) -> Selector:
    items = [x.strip() for x in s.split(",")]
    if not s.strip() or any(not x for x in items):
        raise _fail(f"gate {expr!r}: empty selector item after '@'")
    got: dict[str, list] = {k: [] for k in SELECTOR_KEYS}
    for it in items:
        key, eq, val = it.partition("=")
        if not eq:
            key, val = "run", it
        key, val = key.strip(), val.strip()
        if key not in SELECTOR_KEYS or not val:
            raise _fail(f"gate {expr!r}: selector item {it!r}; use a run name or component=, layer=, name=")
        got[key].append(_parse_layer(val, expr) if key == "layer" else val)
    return Selector(tuple(got["run"]), tuple(got["component"]), tuple(got["layer"]), tuple(got["name"]))


def known_metrics() -> set[str]:
    """Metric names a gate may use: the gateable columns of the schema (every registered metric is one)."""
    return set(RUN_COLUMNS) | set(SPECTRAL_COLUMNS) | set(PAIR_COLUMNS)


def parse_gate(expr: str) -> Gate:
    """Parse `[AGG:]METRIC OP VALUE[@SELECTOR]`; a malformed gate or unknown metric is an `UpdeltaError`."""
    m = _GATE_RE.match(expr or "")
    if not m:
        raise _fail(f"gate {expr!r} is malformed")
    agg = m.group("agg")
    if agg is not None:
        agg = agg.lower()
        if agg not in AGGS:
            raise _fail(f"gate {expr!r}: unknown aggregate {agg!r}")
    metric = m.group("metric")
    if metric not in known_metrics():
        raise _fail(f"gate {expr!r}: unknown metric {metric!r} (known: {', '.join(sorted(known_metrics()))})")
    if agg is None and schema.COLUMNS[metric].agg == "median":
        raise _fail(f"gate {expr!r}: {metric} is a per-tensor concentration figure; give an AGG, e.g. max:{metric}")
    value = _parse_value(m.group("value"), expr)
    sel = _parse_selector(m.group("sel"), expr) if m.group("sel") is not None else Selector()
    for c in sel.components:
        if not any(fnmatch.fnmatchcase(k, c) for k in COMPONENTS):
            raise _fail(f"gate {expr!r}: component={c} matches none of {', '.join(COMPONENTS)}")
    return Gate(expr.strip(), metric, m.group("op"), value, agg, sel)


def parse_gates(exprs) -> list[Gate]:
    return [g if isinstance(g, Gate) else parse_gate(g) for g in (exprs or ())]


# ---- selection ---------------------------------------------------------------------------------
def _match_any(value: str, globs) -> bool:
    return any(fnmatch.fnmatchcase(str(value), g) for g in globs)


def _select_runs(names: list[str], gate: Gate) -> list[str]:
    if not gate.selector.runs:
        return list(names)
    return [r for r in names if _match_any(r, gate.selector.runs)]


def _select_pairs(pairs: list[tuple[str, str]], gate: Gate) -> list[tuple[str, str]]:
    if not gate.selector.runs:
        return list(pairs)
    g = gate.selector.runs
    return [(a, b) for a, b in pairs if _match_any(a, g) or _match_any(b, g) or _match_any(f"{a}/{b}", g)]


def _filter_tensors(df, sel: Selector):
    import pandas as pd  # pandas: not needed to parse a gate

    if df.empty:
        return df
    keep = pd.Series(True, index=df.index)
    if sel.components:
        keep &= df["component"].astype(str).map(lambda c: _match_any(c, sel.components))
    if sel.layers:
        lay = pd.to_numeric(df["layer"], errors="coerce")
        inr = pd.Series(False, index=df.index)
        for lo, hi in sel.layers:
            inr |= (lay >= lo) & (lay <= hi)
        keep &= inr.fillna(False).astype(bool)
    if sel.names:
        keep &= df["name"].astype(str).map(lambda n: _match_any(n, sel.names))
    return df[keep]


def check_runs(gates, runs: list[str]) -> None:
    """Before reading any checkpoint: every run glob must match a run."""
    for g in gates:
        for pat in g.selector.runs:
            if not any(_match_any(r, [pat]) for r in runs) and "/" not in pat:
                raise _fail(f"gate {g.expr!r}: selector {pat!r} matches no run (runs: {', '.join(runs)})")


def validate(gates, result) -> None:
    """After the numbers exist, before anything is written: metric present, selector matches something."""
    for g in gates:
        _subjects(g, result)


def _subjects(gate: Gate, result) -> tuple:
    """(kind, per-tensor table filtered by tensor selectors, subjects) or an `UpdeltaError`."""
    import pandas as pd  # pandas: not needed to parse a gate

    from updelta.tables.aggregate import counted, towers_included  # pandas: not needed to parse a gate


    if gate.is_pair:
        table = result.pairs if result.pairs is None else counted(result.pairs, towers_included(result.meta))
        if table is None or table.empty:
            why = ("every pair of runs has different bases (docs/inputs.md, Per-run bases)"
                   if result.info.pairs_skipped else "give at least two runs")
            raise _fail(f"gate {gate.expr!r}: {gate.metric} is a cross-run metric and this result has no pairs "
                        f"({why})")
        pairs = list(dict.fromkeys(zip(table["run_a"], table["run_b"])))
        subjects = _select_pairs(pairs, gate)
        kind = "pair"
    else:
        table = counted(result.tensors, towers_included(result.meta))
        subjects = _select_runs(result.runs, gate)
        kind = "run"
    if table.empty:  # nothing was compared: say so, not that the metric is not numeric
        raise _fail(f"gate {gate.expr!r}: the result has no {'pair' if kind == 'pair' else 'tensor'} rows (nothing "
                    f"was compared), so no gate can be evaluated; check the checkpoints and --include/--exclude")
    if gate.metric not in table.columns:
        hint = " (spectral metrics need --spectral fast or full)" if gate.metric not in RUN_COLUMNS + PAIR_COLUMNS \
            else ""
        raise _fail(f"gate {gate.expr!r}: metric {gate.metric!r} is not in this result{hint}")
    if not pd.api.types.is_numeric_dtype(table[gate.metric]):
        raise _fail(f"gate {gate.expr!r}: {gate.metric!r} is not a numeric metric")
    if not subjects:
        skipped = _select_pairs([(p.run_a, p.run_b) for p in result.info.pairs_skipped], gate) if kind == "pair" else []
        why = (f" measured; not compared (different bases, docs/inputs.md): {', '.join(f'{a}/{b}' for a, b in skipped)}"
               if skipped else "")
        raise _fail(f"gate {gate.expr!r}: selector {gate.selector} matches no "
                    f"{'pair of runs' if kind == 'pair' else 'run'}{why}")
    sel_t = _filter_tensors(table, gate.selector)
    if kind == "pair":
        sel_t = sel_t[[(a, b) in set(subjects) for a, b in zip(sel_t["run_a"], sel_t["run_b"])]]
    else:
        sel_t = sel_t[sel_t["run"].isin(subjects)]
    if sel_t.empty:
        raise _fail(f"gate {gate.expr!r}: selector {gate.selector} matches no tensor")
    return kind, sel_t, subjects


# ---- evaluation --------------------------------------------------------------------------------
def _whole(kind: str, sel_t, full: bool, result):
    """Per-subject aggregate of the selected tensors (the stored whole-model table when nothing is filtered)."""
    from updelta.tables.aggregate import aggregate_pairs, aggregate_tensors  # pandas: not needed to parse a gate

    if kind == "run":
        if full:
            return result.summary
        return aggregate_tensors(sel_t, ["run"])
    if full:
        return result.pairs_summary
    return aggregate_pairs(sel_t, [])


def evaluate(result, gate: Gate) -> GateResult:
    """Evaluate one gate on a `Result` (see the module docstring for the semantics)."""
    import pandas as pd  # pandas: not needed to parse a gate

    kind, sel_t, subjects = _subjects(gate, result)
    rows, offenders = [], []
    metric = gate.metric
    for subj in subjects:
        if kind == "run":
            sub = sel_t[sel_t["run"] == subj]
            label = subj
        else:
            sub = sel_t[(sel_t["run_a"] == subj[0]) & (sel_t["run_b"] == subj[1])]
            label = f"{subj[0]}/{subj[1]}"
        if sub.empty:
            continue
        who = {"run": label} if kind == "run" else {"pair": label}
        if gate.agg is None:
            agg = _whole(kind, sub, not gate.selector.tensor_filter, result)
            if kind == "run":
                agg = agg[agg["run"] == subj]
            else:
                agg = agg[(agg["run_a"] == subj[0]) & (agg["run_b"] == subj[1])]
            value = float(agg[metric].iloc[0]) if len(agg) and metric in agg else math.nan
            ok = gate.holds(value)
            if not ok:
                offenders.append({**who, "name": None, "value": value})
        else:
            vals = pd.to_numeric(sub[metric], errors="coerce").astype("float64")
            value = float(getattr(vals, gate.agg)()) if vals.notna().any() else math.nan
            ok = gate.holds(value)
            if not ok:
                if gate.agg == "mean" or math.isnan(value):
                    offenders.append({**who, "name": None, "value": value})
                else:  # the tensors that break the bound, worst first
                    bad = sub.assign(_v=vals)[[not math.isnan(v) and not gate.holds(v) for v in vals]]
                    bad = bad.sort_values("_v", ascending=gate.op in (">", ">="), na_position="first")
                    for _, r in bad.iterrows():
                        offenders.append({**who, "name": r["name"], "value": float(r["_v"])})
        rows.append({"subject": label, "value": value, "passed": ok})
    return GateResult(gate, rows, offenders)


def evaluate_all(result, gates) -> list[GateResult]:
    return [evaluate(result, g) for g in parse_gates(gates)]
