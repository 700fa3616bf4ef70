"""`updelta demo`: train a zoo of fine-tunes of the built-in base and compare them in one report.

Stages (each announced on stderr, each training run with its own progress bar):
1. the base: the committed one (`updelta.train.default_base_path()`), or pretrained into DIR/base if absent;
2. per seed: SFT, DFT, GRPO and ES on the target task, SFT and DFT on the knowledge task, each in
   DIR/runs/METHOD-TASK-sSEED/ (a finished run with the same preset and seed is reused unless `force`);
3. every run is evaluated on all splits by the trainer (before and after, in its eval.json);
4. compare + report over all runs, every update measured against the base it started from, with the
   evaluations and the literature's claims (`updelta.claims`): DIR/report.md, report.html, summary.json,
   figures/, tables/.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .claims import Claim, claims, zoo_name
from .errors import UpdeltaError

ZOO = (("sft", "target"), ("dft", "target"), ("grpo", "target"), ("es", "target"),
       ("sft", "knowledge"), ("dft", "knowledge"))
REPORT_ENTRIES = ("report.md", "report.html", "summary.json", "figures", "tables")


@dataclass(frozen=True)
class DemoOptions:
    """Options of `updelta demo` (help text shared with the CLI)."""

    out: Path = Path("updelta-demo")
    quick: bool = False
    seeds: int = 1
    force: bool = False


DEMO_HELP = {
    "out": "Folder for the runs and the report (created; reused on a re-run).",
    "quick": "Small preset for tests and CI: every run trains in seconds.",
    "seeds": "Training seeds per method (claims need at least 2 to be more than inconclusive).",
    "force": "Retrain runs that are already finished in --out.",
}


@dataclass
class DemoOutcome:
    out: Path
    table: list[dict]
    claims: list[Claim]
    report: object  # updelta.report.ReportOutcome
    seconds: float


def _stage(msg: str) -> None:
    print(f"updelta demo: {msg}", file=sys.stderr, flush=True)


def _reusable(folder: Path, quick: bool, seed: int) -> bool:
    """A finished run (eval.json written last) trained with the same preset and seed."""
    try:
        ev = json.loads((folder / "eval.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(ev.get("options", {}).get("quick")) == quick and ev.get("seed") == seed


def _base(out: Path, quick: bool) -> Path:
    from .train import PretrainOptions, default_base_path, pretrain

    base = default_base_path()
    if (base / "config.json").exists():
        _stage(f"1/4 base: using the committed base {base}")
        return base
    mine = out / "base"
    if (mine / "config.json").exists():
        _stage(f"1/4 base: reusing {mine}")
        return mine
    _stage(f"1/4 base: no committed base; pretraining one into {mine}")
    pretrain(PretrainOptions(out=mine, quick=quick))
    return mine


def train_zoo(out: Path, base: Path, quick: bool, seeds: int, force: bool) -> dict[str, Path]:
    """Train (or reuse) every run of the zoo; returns {run name: folder} in a fixed order."""
    from .train import METHODS, run_method

    runs: dict[str, Path] = {}
    todo = [(s, m, t) for s in range(seeds) for m, t in ZOO]
    for i, (seed, method, task) in enumerate(todo, 1):
        name = zoo_name(method, task, seed)
        folder = out / "runs" / name
        if not force and _reusable(folder, quick, seed):
            _stage(f"2/4 run {i}/{len(todo)} {name}: reusing the finished run in {folder}")
        else:
            _stage(f"2/4 run {i}/{len(todo)} {name}: training")
            opts = METHODS[method].options(out=folder, base=base, task=task, seed=seed, quick=quick)
            run_method(method, opts)
        runs[name] = folder
    return runs


def _install_report(tmp: Path, out: Path) -> None:
    """Move the report's files from `tmp` into `out`, replacing an earlier report's, leaving runs/ alone."""
    for entry in REPORT_ENTRIES:
        src, dst = tmp / entry, out / entry
        if not src.exists():
            continue
        if dst.is_dir():
            shutil.rmtree(dst)
        elif dst.exists():
            dst.unlink()
        os.replace(src, dst)


def summary_table(result, evals: dict) -> list[dict]:
    """One row per run: gains, whole-model update size, sparsity per convention, median effective rank."""
    rows = []
    s = result.summary.set_index("run")
    for run in result.runs:
        e = evals.get(run)
        g = e.gains if e is not None else {}
        r = s.loc[run]
        rows.append({
            "run": run,
            "target_gain": g.get("target_id", math.nan),
            "ood_gain": g.get("target_ood", math.nan),
            "knowledge_gain": g.get("knowledge", math.nan),
            "retention_change": g.get("retention", math.nan),
            "rel_delta": r["rel_delta"],
            "sparsity_exact": r["sparsity_exact"],
            "sparsity_atol": r["sparsity_atol"],
            "sparsity_rtol": r["sparsity_rtol"],
            "median_erank": r["erank"] if "erank" in r.index else math.nan,
        })
    return rows


def format_table(rows: list[dict]) -> str:
    from .text import fmt, table

    header = ["run", "target gain", "OOD gain", "knowledge gain", "retention change", "rel update",
              "sparse exact", "sparse atol", "sparse rtol", "median erank"]
    body = [[r["run"], f"{r['target_gain']:+.3f}", f"{r['ood_gain']:+.3f}", f"{r['knowledge_gain']:+.3f}",
             f"{r['retention_change']:+.3f}", fmt(r["rel_delta"]), fmt(r["sparsity_exact"], "pct"),
             fmt(r["sparsity_atol"], "pct"), fmt(r["sparsity_rtol"], "pct"), fmt(r["median_erank"])] for r in rows]
    return table(body, header)


def run_demo(opts: DemoOptions) -> DemoOutcome:
    """Run the whole demo (see the module docstring)."""
    from .api import compare
    from .evals import load_evals
    from .report import Finding, write_report

    if opts.seeds < 1:
        raise UpdeltaError(f"--seeds must be at least 1, got {opts.seeds}")
    t0 = time.perf_counter()
    out = Path(opts.out)
    if out.exists() and not out.is_dir():
        raise UpdeltaError(f"{out}: exists and is not a folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    base = _base(out, opts.quick)
    runs = train_zoo(out, base, opts.quick, opts.seeds, opts.force)
    _stage(f"3/4 compare: {len(runs)} runs against {base}")
    result = compare(base, runs, spectral="full", histogram=True)
    evals = load_evals({name: folder / "eval.json" for name, folder in runs.items()})
    found = claims(result, evals)
    extra = [Finding("claim", c.claim, f"{c.verdict}: {c.text}", c.source) for c in found]
    _stage(f"4/4 report into {out}")
    with tempfile.TemporaryDirectory(dir=out, prefix=".report-") as tmp:
        outcome = write_report(result, Path(tmp) / "report", evals=evals, extra_findings=extra)
        _install_report(Path(tmp) / "report", out)
    rows = summary_table(result, evals)
    return DemoOutcome(out, rows, found, outcome, time.perf_counter() - t0)
