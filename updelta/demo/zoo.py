"""`updelta demo`: train a zoo of fine-tunes of one base and compare them in one report.

Stages (each announced on stderr, each training run with its own progress bar):
1. the base: `--base toy` (the committed one, `updelta.train.default_base_path()`, or pretrained into DIR/base if
   absent), `smollm2` (SmolLM2-135M-Instruct from the updelta cache) or a local HF causal-LM folder;
2. per seed: SFT, DFT, GRPO and ES on the target task, SFT and DFT on the knowledge task, each in
   DIR/runs/METHOD-TASK-sSEED/ (a finished run with the same preset, seed and base is reused unless `force`); on a
   real base without --quick also GRPO started from that seed's SFT checkpoint (`grposft-target-sSEED`, eval.json
   `start: sft`) and the precision study (`PRECISION`: GRPO and SFT saved in float32, GRPO at 10x its lr). The toy
   zoo without --quick trains ES and GRPO at half their `updelta train` budgets (`TOY_DEMO_BUDGET`), so that the
   default two seeds, which the claims' verdict rule needs, take about as long as one seed at the full budgets;
   seeds train in parallel, one process per core (`workers`, `train_zoo`), the same runs bit for bit as one
   process training them one after another at the same torch threads;
3. every run is evaluated on all splits by the trainer (before and after, in its eval.json);
4. one compare + report over every run (spectral work: full, except `off` for a real base with --quick, where SVDs
   of 135M parameters would dominate a CI run), with the evaluations and the literature's claims
   (`updelta.demo.claims`): DIR/report.md, report.html, summary.json, figures/, tables/. A run started from another
   run's checkpoint (GRPO from SFT) is measured from that checkpoint (`run_bases` of `compare`); cross-run metrics
   are computed only between runs that share a base (docs/inputs.md, Per-run bases).
"""
from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path

from updelta.demo.claim_rules import gain_se
from updelta.demo.claims import RUN_NAME, Claim, claims, zoo_name
from updelta.demo.predictions import token_sets
from updelta.demo.sections import add_zoo_sections
from updelta.demo.zoo_table import group_rows, run_rows
from updelta.errors import UpdeltaError
from updelta.tables.evals import load_evals

ZOO = (("sft", "target"), ("dft", "target"), ("grpo", "target"), ("es", "target"),
       ("sft", "knowledge"), ("dft", "knowledge"))
FROM_SFT = ("grposft", "target")  # GRPO started from the same seed's sft-target run (real base, full demo only)
# The precision study (Zhu et al.; real base, full demo only): run name -> (trainer, option overrides). "lr10"
# is 10x the trainer's preset lr on a real base.
PRECISION = {("grpofp32", "target"): ("grpo", {"save_dtype": "float32"}),
             ("sftfp32", "target"): ("sft", {"save_dtype": "float32"}),
             ("grpolr10", "target"): ("grpo", {"lr": "lr10"})}
TOY_DEMO_BUDGET = {"es": {"iterations": 15}, "grpo": {"steps": 20}}  # toy zoo without --quick: half the ES and GRPO
DEFAULT_SEEDS = {"toy": 2, "real": 1}  # the verdict rule needs two seeds; one real-base seed takes most of an hour
SE_SPLITS = {"target_gain": "target_id", "ood_gain": "target_ood", "knowledge_gain": "knowledge",
             "retention_change": "retention"}
REPORT_ENTRIES = ("report.md", "report.html", "summary.json", "figures", "tables")


@dataclass(frozen=True)
class DemoOptions:
    """Options of `updelta demo` (help text shared with the CLI)."""

    out: Path = Path("updelta-demo")
    base: str = "toy"
    quick: bool = False
    seeds: int | None = None
    force: bool = False
    workers: int | None = None


DEMO_HELP = {
    "out": "Folder for the runs and the report (created; reused on a re-run).",
    "base": "The base: toy (the committed base), smollm2 (SmolLM2-135M-Instruct, from the updelta cache) or a "
            "local HF causal-LM folder; presets and tasks follow it (toy vs real).",
    "quick": "Small preset for tests and CI: every run trains in seconds on the toy base, in about a minute of CPU "
             "on SmolLM2 (the zoo without GRPO from SFT and the precision study).",
    "seeds": "Training seeds per method (claims need at least 2 to be more than inconclusive); default 2 on the "
             "toy base, 1 on a real one.",
    "force": "Retrain runs that are already finished in --out.",
    "workers": "Seeds trained at once, each in its own process with cores / workers torch threads (default: one "
               "per core, at most one per seed; 1 trains them one after another in this process).",
}


@dataclass
class DemoOutcome:
    out: Path
    table: list[dict]
    claims: list[Claim]
    report: object  # updelta.report.ReportOutcome
    seconds: float
    groups: list[dict] = None  # the trade-off table (updelta.demo.zoo_table.group_rows)


def _stage(msg: str) -> None:
    print(f"updelta demo: {msg}", file=sys.stderr, flush=True)


def _reusable(folder: Path, quick: bool, seed: int, base: Path | None = None, overrides: dict | None = None) -> bool:
    """A finished run (eval.json written last) trained with the same preset, seed, base and option overrides."""
    try:
        ev = json.loads((folder / "eval.json").read_text())
    except (OSError, ValueError):
        return False
    same_base = base is None or ev.get("base") is None or ev.get("base") == str(Path(base).resolve())
    options = ev.get("options", {})
    same_options = all(options.get(k) == v for k, v in (overrides or {}).items())
    return bool(options.get("quick")) == quick and ev.get("seed") == seed and same_base and same_options


def _base(out: Path, quick: bool, name: str = "toy") -> Path:
    from updelta.train import (  # torch, transformers: loaded when the zoo runs
        PretrainOptions,
        default_base_path,
        pretrain,
    )

    if name != "toy":
        from updelta.train.bases import resolve_base  # torch, transformers: loaded when the zoo runs
        from updelta.train.options import OptionsError  # torch, transformers: loaded when the zoo runs

        try:
            base = resolve_base(name)
        except OptionsError as e:
            raise UpdeltaError(str(e)) from None
        _stage(f"1/4 base: {base}")
        return base
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


def _is_real(base: Path) -> bool:
    """Whether `base` gets the real-model presets and tasks (`updelta.train.suites.profile` of its tokenizer)."""
    from transformers import AutoTokenizer  # optional extra: train

    from updelta.train.suites import profile  # torch, transformers: loaded when the zoo runs

    return profile(AutoTokenizer.from_pretrained(base)) == "real"


def zoo_of(real: bool, quick: bool) -> tuple[tuple[str, str], ...]:
    """The (method, task) runs of one seed: ZOO, plus GRPO from SFT and the precision study on a real base without
    --quick."""
    return ZOO + ((FROM_SFT, *PRECISION) if real and not quick else ())


def _trainer(method: str, task: str, real: bool, quick: bool) -> tuple[str, dict]:
    """(the `updelta train` method, option overrides) of a zoo run."""

    from updelta.train import METHODS  # torch, transformers: loaded when the zoo runs

    if (method, task) in PRECISION:
        trainer, overrides = PRECISION[(method, task)]
        if overrides.get("lr") == "lr10":
            lr = next(f for f in fields(METHODS[trainer].options) if f.name == "lr").metadata
            overrides = {**overrides, "lr": 10 * lr["real_quick" if quick else "real"]}
        return trainer, overrides
    if method == FROM_SFT[0]:
        return "grpo", {}
    return method, (TOY_DEMO_BUDGET.get(method, {}) if not real and not quick else {})


def train_zoo(out: Path, base: Path, quick: bool, seeds: int, force: bool, real: bool = False,
              workers: int = 1) -> dict[str, Path]:
    """Train (or reuse) every run of the zoo; returns {run name: folder} in a fixed order. With `workers` > 1 the
    seeds still to train go to that many spawned processes, one seed's runs in order per process (GRPO from SFT
    needs its seed's SFT run), each with cores / workers torch threads and its progress bars off; the stage
    lines say when each run starts and ends."""
    todo = [(s, m, t) for s in range(seeds) for m, t in zoo_of(real, quick)]
    runs: dict[str, Path] = {}
    chains: dict[int, list[tuple]] = {}
    for i, (seed, method, task) in enumerate(todo, 1):
        name = zoo_name(method, task, seed)
        folder = out / "runs" / name
        start = start_folder(out, base, method, task, seed)
        trainer, overrides = _trainer(method, task, real, quick)
        runs[name] = folder
        if not force and _reusable(folder, quick, seed, start, overrides):
            _stage(f"2/4 run {i}/{len(todo)} {name}: reusing the finished run in {folder}")
            continue
        chains.setdefault(seed, []).append((f"{i}/{len(todo)}", name, trainer,
                                            dict(out=folder, base=str(start), task=task, seed=seed, quick=quick,
                                                 **overrides)))
    workers = max(1, min(int(workers), len(chains)))
    if workers == 1:
        for chain in chains.values():
            _train_chain(chain, threads=None, bars=True)
        return runs
    threads = max(1, _cores() // workers)
    _stage(f"2/4 training {sum(map(len, chains.values()))} runs of {len(chains)} seeds in {workers} processes "
           f"({threads} torch thread{'s' if threads > 1 else ''} each)")

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        for f in [pool.submit(_train_chain, chain, threads, False) for chain in chains.values()]:
            f.result()  # a run's error is raised here, as itself
    return runs


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _train_chain(chain: list[tuple], threads: int | None, bars: bool) -> None:
    """Train one seed's runs in order (`train_zoo`; in a worker process when `threads` is set)."""
    from updelta.train import METHODS, run_method  # torch, transformers: loaded when the zoo runs

    if threads is not None:
        import torch  # torch: kept out of torch-free paths

        torch.set_num_threads(threads)
    if not bars:
        os.environ["UPDELTA_PROGRESS"] = "0"
    for step, name, trainer, kwargs in chain:
        _stage(f"2/4 run {step} {name}: training")
        t0 = time.perf_counter()
        result = run_method(trainer, METHODS[trainer].options(**kwargs))
        if not bars:
            _stage(f"2/4 run {step} {name}: done in {time.perf_counter() - t0:.0f} s")
        for flag in result.warnings:
            _stage(f"warning: {name}: {flag} (see its eval.json)")


def start_folder(out: Path, base: Path, method: str, task: str, seed: int) -> Path:
    """The folder a zoo run starts from: the same seed's SFT run for GRPO-from-SFT, else the base."""
    return out / "runs" / zoo_name("sft", task, seed) if method == FROM_SFT[0] else base


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


def _flags(e) -> str:
    """The no-op checks that fired for a run (eval.json no_update / no_signal), as the table shows them."""
    extra = getattr(e, "extra", None) or {}
    return ",".join(name.replace("_", "-") for name in ("no_update", "no_signal") if extra.get(name)) or ""


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
            **{f"{k}_se": gain_se(e, split) for k, split in SE_SPLITS.items()},
            "rel_delta": r["rel_delta"],
            "sparsity_exact": r["sparsity_exact"],
            "sparsity_atol": r["sparsity_atol"],
            "sparsity_rtol": r["sparsity_rtol"],
            "median_erank": r["erank"] if "erank" in r.index else math.nan,
            "flags": _flags(e),
        })
    return rows


def format_table(rows: list[dict]) -> str:
    from updelta.report.text import fmt, table  # torch, transformers: loaded when the zoo runs

    header = ["run", "target gain", "OOD gain", "knowledge gain", "retention change", "rel update",
              "sparse exact", "sparse atol", "sparse rtol", "median erank", "flags"]

    def eff(r: dict, k: str) -> str:  # an accuracy change with its standard error (claim_rules.gain_se)
        se = r.get(f"{k}_se", math.nan)
        return f"{r[k]:+.3f}" + (f" ±{se:.3f}" if not math.isnan(se) else "")

    body = [[r["run"], eff(r, "target_gain"), eff(r, "ood_gain"), eff(r, "knowledge_gain"),
             eff(r, "retention_change"), fmt(r["rel_delta"]), fmt(r["sparsity_exact"], "pct"),
             fmt(r["sparsity_atol"], "pct"), fmt(r["sparsity_rtol"], "pct"), fmt(r["median_erank"]),
             r.get("flags") or "-"] for r in rows]
    return table(body, header)


def run_demo(opts: DemoOptions) -> DemoOutcome:
    """Run the whole demo (see the module docstring)."""
    from updelta.api import compare  # torch, transformers: loaded when the zoo runs
    from updelta.report import write_report  # torch, transformers: loaded when the zoo runs

    if opts.seeds is not None and opts.seeds < 1:
        raise UpdeltaError(f"--seeds must be at least 1, got {opts.seeds}")
    if opts.workers is not None and opts.workers < 1:
        raise UpdeltaError(f"--workers must be at least 1, got {opts.workers}")
    t0 = time.perf_counter()
    out = Path(opts.out)
    if out.exists() and not out.is_dir():
        raise UpdeltaError(f"{out}: exists and is not a folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    base = _base(out, opts.quick, opts.base)
    real = _is_real(base)
    seeds = opts.seeds if opts.seeds is not None else DEFAULT_SEEDS["real" if real else "toy"]
    workers = opts.workers if opts.workers is not None else min(seeds, _cores())
    runs = train_zoo(out, base, opts.quick, seeds, opts.force, real, workers)
    run_bases = {n: str(s) for n in runs if (s := start_folder(out, base, *_parts(n))) != base}
    options = {"spectral": "off" if real and opts.quick else "full", "histogram": True}
    _stage(f"3/4 compare: {len(runs)} runs against {base}"
           + (f" ({len(run_bases)} against the checkpoint each started from)" if run_bases else ""))
    result = compare(base, runs, run_bases=run_bases, **options)
    evals = load_evals({name: folder / "eval.json" for name, folder in runs.items()})
    found = claims(result, evals, token_sets(base))
    zoo_rows = run_rows(result, evals)
    groups = group_rows(zoo_rows)
    _stage(f"4/4 report into {out}")
    with tempfile.TemporaryDirectory(dir=out, prefix=".report-") as tmp:
        outcome = write_report(result, Path(tmp) / "report", evals=evals, claims=found)
        add_zoo_sections(Path(tmp) / "report", found, zoo_rows, groups)
        _install_report(Path(tmp) / "report", out)
    rows = summary_table(result, evals)
    return DemoOutcome(out, rows, found, outcome, time.perf_counter() - t0, groups)


def _parts(name: str) -> tuple[str, str, int]:
    m = RUN_NAME.match(name)
    return m["method"], m["task"], int(m["seed"])
