"""`write_report`: a result (and evaluations, gates) in, the report folder out (docs/architecture.md).

The folder is built beside its destination and renamed into place; see `updelta.report` for its layout.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from updelta.atomic import atomic_dir
from updelta.errors import UpdeltaError, UpdeltaWarning
from updelta.options import ReportOptions
from updelta.report import html as html_render, markdown as md_render
from updelta.report.build import build
from updelta.report.figures import FigureMissing, make_figures
from updelta.report.findings import Finding, as_frame, findings as compute_findings
from updelta.report.gates import GateResult, evaluate, parse_gates, validate
from updelta.tables.aggregate import noted_records
from updelta.tables.evals import Evaluation, check_bases, check_names, load_evals

REPORT_MARKERS = ("report.md", "summary.json")


@dataclass
class ReportOutcome:
    """What `write_report` wrote and how the gates went."""

    path: Path
    gates: list[GateResult] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)  # relative paths of the PNGs written
    missing_figures: list[FigureMissing] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # also in the report and emitted as UpdeltaWarning

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    @property
    def failed(self) -> list[GateResult]:
        return [g for g in self.gates if not g.passed]


def check_out_dir(out: str | os.PathLike, protect: tuple = ()) -> Path:
    """The report folder may be new, empty, or a previous report (replaced); anything else is refused."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise UpdeltaError(f"{p}: --out must be a folder for the report, and a file of that name exists")
    for q in protect:
        if q is not None and p.resolve() == Path(q).resolve():
            raise UpdeltaError(f"{p}: --out is the folder read with --from; choose another folder for the report")
    if p.is_dir() and any(p.iterdir()) and not all((p / m).exists() for m in REPORT_MARKERS):
        raise UpdeltaError(f"{p}: folder exists and is not an updelta report; refusing to replace it "
                           f"(choose a new folder or remove it)")
    return p


def _clean(v):
    """JSON-safe: NaN -> None, numpy scalars -> Python."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        try:
            v = v.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if v is pd.NA:
        return None
    return v


def _records(df: pd.DataFrame) -> list[dict]:
    drop = [c for c in ("hist",) if c in df.columns]
    return [_clean(r) for r in df.drop(columns=drop).to_dict(orient="records")]


def summary_json(result, evals: dict[str, Evaluation], gate_results, items, figures, missing) -> dict:
    m = result.meta  # written as recorded (JSON), not re-serialised from `result.info`
    info = result.info
    runs = {}
    summ = {r["run"]: r for r in noted_records(result.summary, _records(result.summary))}
    for r in result.runs:
        runs[r] = {
            "identity": info.runs[r].to_dict() if r in info.runs else None,
            "base": info.base_of(r).to_dict(),  # the checkpoint the run was measured from
            "whole_model": {k: v for k, v in (summ.get(r) or {}).items() if k != "run"},
            "evaluation": evals[r].as_dict() if r in evals else None,
            "gates": [{"gate": g.gate.expr, "value": x["value"], "passed": x["passed"]}
                      for g in gate_results for x in g.rows if x["subject"] == r],
        }
    return _clean({
        "updelta_version": m.get("updelta_version"),
        "passed": all(g.passed for g in gate_results),
        "base": m.get("base"),
        "run_order": result.runs,
        "runs": runs,
        "pairs": _records(result.pairs_summary) if len(result.pairs_summary) else [],
        "pairs_skipped": [p.to_dict() for p in info.pairs_skipped],
        "gates": [g.as_dict() for g in gate_results],
        "findings": [f.as_dict() for f in items],
        "figures": [f"figures/{f.stem}.png" for f in figures],
        "figures_missing": [{"figure": x.stem, "reason": x.reason} for x in missing],
        "options": m.get("options"),
        "conventions": m.get("conventions"),
        "pairing": m.get("pairing"),
        "device": m.get("device"),
    })


def _gate_frame(gate_results) -> pd.DataFrame:
    rows = [{"gate": g.gate.expr, "subject": r["subject"], "value": r["value"], "passed": r["passed"]}
            for g in gate_results for r in g.rows]
    return pd.DataFrame(rows, columns=["gate", "subject", "value", "passed"])


def _eval_frame(evals: dict[str, Evaluation]) -> pd.DataFrame:
    rows = [{"run": r, "method": e.method, "split": k, "before": e.before[k], "after": e.after[k],
             "gain": e.after[k] - e.before[k]} for r, e in evals.items() for k in e.splits]
    return pd.DataFrame(rows, columns=["run", "method", "split", "before", "after", "gain"])


def eval_base_findings(result, evals: dict[str, Evaluation], options: ReportOptions) -> list[Finding]:
    """The evaluation-base check (`evals.check_bases`) against each run's compared base, as findings; a mismatch
    raises `EvaluationError` unless `options.eval_base_mismatch == "warn"`."""
    info = result.info
    lines = check_bases(evals, {r: info.base_of(r) for r in result.runs}, options.eval_base_mismatch)
    return [Finding("evaluation", None, f"warning: {x}") for x in lines]


def write_report(result, out_dir: str | os.PathLike, evals=None, gates=(), *, figures: bool = True,
                 extra_findings=(), options: ReportOptions | None = None, claims=()) -> ReportOutcome:
    """Write the report of `result` into `out_dir` and evaluate `gates` (expressions or `Gate`s).

    `evals`: {run: Evaluation | path to eval.json | dict}; each one's base is checked against the base its run was
    measured from (`evals.check_bases`; `options.eval_base_mismatch`). `extra_findings`: `Finding`s computed
    elsewhere, listed after the report's own. `claims`: claim records (`updelta.demo.claims.Claim`) tested on these
    runs: a table right after the summary (one row per claim, a column per field of the record), in summary.json
    ("claims") and, as findings of topic "claim", in tables/findings.parquet. A malformed gate,
    an unknown metric, a selector that matches nothing, an evaluation for an unknown run, or an evaluation of
    another base (unless `eval_base_mismatch="warn"`) raises `UpdeltaError` before anything is written. Failed
    gates do not raise: see `ReportOutcome.passed`. Warnings are findings in the report, `ReportOutcome.warnings`
    and `UpdeltaWarning`s.
    """
    options = options or ReportOptions()
    gate_list = parse_gates(gates)
    validate(gate_list, result)
    evals = load_evals(evals)
    check_names(evals, result.runs)
    base_items = eval_base_findings(result, evals, options)
    out = check_out_dir(out_dir)
    gate_results = [evaluate(result, g) for g in gate_list]
    claims = list(claims)
    items = compute_findings(result, evals) + base_items + list(extra_findings) + [
        Finding("claim", c.claim, f"{c.verdict}: {c.text}", c.source) for c in claims]
    figs, missing = make_figures(result, evals) if figures else ([], [FigureMissing("all", "", "not drawn "
                                                                                    "(--no-figures)")])
    doc = build(result, evals, gate_results, items, figs, missing, claims)
    with atomic_dir(out) as tmp:
        (tmp / "figures").mkdir()
        for f in figs:
            (tmp / "figures" / f"{f.stem}.png").write_bytes(f.png)
        result.save(tmp / "tables")
        tables = tmp / "tables"
        _gate_frame(gate_results).to_parquet(tables / "gates.parquet", index=False)
        _eval_frame(evals).to_parquet(tables / "evals.parquet", index=False)
        as_frame(items).to_parquet(tables / "findings.parquet", index=False)
        (tmp / "report.md").write_text(md_render.render(doc), encoding="utf-8")
        (tmp / "report.html").write_text(html_render.render(doc), encoding="utf-8")
        sj = summary_json(result, evals, gate_results, items, figs, missing)
        sj["claims"] = _clean([asdict(c) for c in claims])
        (tmp / "summary.json").write_text(json.dumps(sj, indent=1, default=str), encoding="utf-8")
    texts = [f.text.removeprefix("warning: ") for f in base_items]
    for w in texts:
        warnings.warn(w, UpdeltaWarning, stacklevel=2)
    return ReportOutcome(out, gate_results, items, [f"figures/{f.stem}.png" for f in figs], missing, texts)
