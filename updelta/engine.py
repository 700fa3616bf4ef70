"""The streaming scan: checkpoints in, one record per (run, tensor) and per (pair, tensor) out.

Data flow: `open_checkpoint` (files) -> `pair_checkpoints` (names) -> `plan.make_plan` (picklable
per-tensor jobs) -> an executor (`executors`) runs `jobs.run_job` over the cheap jobs and
`jobs.run_spectral_job` over the 2-D tensors -> `jobs.tensor_records` -> `Result`.

Memory is bounded by the blocks in flight (a few per worker) and, with spectral work, by one
materialised tensor per worker (the largest ones never side by side, see `executors`), not by
model size or the number of runs. Warnings (non-finite values) go to `Result.warnings` and to
`warnings.warn(UpdeltaWarning)`; nothing here prints.
"""
from __future__ import annotations

import os
import time
import warnings

import torch

from ._version import __version__
from .adapters import open_run
from .errors import UpdeltaError, UpdeltaWarning
from .executors import default_memory_budget, make_executor
from .io import Checkpoint, open_checkpoint
from .io.hub import locate
from .io.locations import reader_scope
from . import jobs_lens
from .jobs import run_job, run_spectral_job, tensor_records
from .jobs_where import decode_tokens
from .metrics import elementwise as ew
from .options import DiffOptions
from .pairing import Pairing, pair_checkpoints
from .plan import Env, Plan, make_plan, resolve_pairs, spectral_budget
from .progress import Progress

try:  # the optional C kernel (see setup.py); the torch path gives the same numbers
    from . import _fused
except ImportError:  # pragma: no cover - exercised when no compiler was available at install
    _fused = None


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UpdeltaError("--device cuda: no CUDA device is visible; use --device cpu or auto")
    return torch.device(device)


def machine_env(opts: DiffOptions) -> Env:
    """The device, kernel and thread budget the planner needs, found on this machine."""
    dev = resolve_device(opts.device)
    return Env(device=str(dev), kernel=_fused is not None and dev.type == "cpu", cores=os.cpu_count() or 1,
               torch_threads=torch.get_num_threads())


def run_plan(plan: Plan, opts: DiffOptions) -> tuple[list[dict], list[dict], list[str], dict[str, list[dict]]]:
    """Execute a plan: (per-tensor records, per-pair records, non-finite notes, rows of the where tables:
    heads, pairs_heads, neurons, and of the logit lens), in tensor order."""
    ex = make_executor(opts, plan.workers)
    try:
        return _run_jobs(plan, opts, ex)
    finally:
        ex.close()  # a Ray this scan started is shut down, outstanding tasks cancelled (also on Ctrl-C)


def _run_jobs(plan: Plan, opts: DiffOptions, ex) -> tuple[list[dict], list[dict], list[str]]:
    records: list[dict] = []
    pair_records: list[dict] = []
    nonfinite: list[str] = []
    tables: dict[str, list[dict]] = {}
    enabled = None if opts.progress else False
    parts: list = []
    with Progress(plan.read_bytes, desc="updelta: reading", unit="B", enabled=enabled) as bar:
        for job, part in zip(plan.cheap, ex.map(run_job, plan.cheap, cost=lambda j: j.cost)):
            parts.append(part)
            bar.update(part.nbytes)
            if job.part == job.parts - 1:
                out = tensor_records(job.tensor, parts)
                records += out.records
                pair_records += out.pair_records
                nonfinite += out.nonfinite
                for k, rows in out.tables.items():
                    tables.setdefault(k, []).extend(rows)
                parts = []
    if plan.factored:  # adapter runs (docs/adapters.md): their own per-tensor jobs, then tensor order again
        from .jobs_factored import run_factored_job, sort_records

        for out in ex.map(run_factored_job, plan.factored, cost=lambda j: j.cost):
            records += out.records
            pair_records += out.pair_records
            nonfinite += out.nonfinite
        records, pair_records = sort_records(plan.tensors, records, pair_records)
    if plan.spectral:
        by_key: dict[tuple[str, str], dict] = {}
        with Progress(len(plan.spectral), desc="updelta: spectral", enabled=enabled) as bar:
            sx = make_executor(opts, plan.workers)  # the largest spectral jobs apart (plan.spectral_budget)
            if getattr(sx, "memory_budget", 0) is None:
                sx.memory_budget = min(default_memory_budget(), spectral_budget(plan.spectral))
            dirs: dict[tuple[str, str], object] = {}
            for job, cols in zip(plan.spectral, sx.map(run_spectral_job, plan.spectral, cost=lambda j: j.cost)):
                for r, c in cols.items():
                    by_key[(r, job.tensor.name)] = c
                    if jobs_lens.KEY in c:
                        dirs[(r, job.tensor.name)] = c.pop(jobs_lens.KEY)
                bar.update(1)
            if plan.lens is not None:  # docs/metrics.md, Logit lens of the update
                job = jobs_lens.LensJob(plan.lens, jobs_lens.entries(plan, dirs), plan.device, plan.spectral_threads)
                tables[jobs_lens.TABLE] = next(iter(sx.map(jobs_lens.run_lens_job, [job], cost=lambda j: j.cost)))
        for rec in records:
            rec.update(by_key.get((rec["run"], rec["name"]), {}))
    return records, pair_records, nonfinite, tables


def nonfinite_warning(notes: list[str]) -> str:
    return (f"non-finite values (NaN/Inf) in {len(notes)} tensor(s); their metrics use the finite elements only: "
            + "; ".join(notes[:10]) + (" ..." if len(notes) > 10 else ""))


def scan(base: str | os.PathLike, runs: dict[str, str | os.PathLike], opts: DiffOptions,
         pairs: list[tuple[str, str]] | None = None):
    """Open, pair and measure: the `Result` of `base` against every run (name -> path).

    `pairs` restricts the cross-run pairs to those listed (default: every unordered pair).
    """
    from .aggregate import towers_note
    from .result import build_result

    if not runs:
        raise UpdeltaError("no fine-tuned checkpoint given; pass at least one NAME=PATH")
    t0 = time.perf_counter()
    cks: dict[str, Checkpoint] = {}
    b = open_checkpoint(locate(base, opts.download))
    caller_threads = torch.get_num_threads()
    try:
        for r, p in runs.items():
            cks[r] = open_run(locate(p, opts.download), b)  # an adapter folder is a run (docs/adapters.md)
        env = machine_env(opts)
        pairing: Pairing = pair_checkpoints(b, cks, opts)
        lens, pairing.notes["lens"] = jobs_lens.setup(b, pairing.family, opts)
        plan = make_plan(pairing, resolve_pairs(list(runs), pairs), opts, env, lens)
        with reader_scope(lend=[f for ck in (b, *cks.values()) for f in ck.files]):
            records, pair_records, nonfinite, tables = run_plan(plan, opts)
        decode_tokens(tables, b.path)  # token rows as text when the base has a tokenizer.json
        jobs_lens.decode(tables.get(jobs_lens.TABLE, []), b.path)
        notes = [nonfinite_warning(nonfinite)] if nonfinite else []
        notes += [n for n in (towers_note(records, opts.towers),) if n]
        for who, names in pairing.notes.get("unindexed", {}).items():
            notes.append(f"{who}: {len(names)} tensor(s) in shards that the index does not name were left out: "
                         + ", ".join(names[:5]) + (" ..." if len(names) > 5 else ""))
        meta = {
            "updelta_version": __version__,
            "options": opts.as_dict(),
            "base": b.identity(),
            "runs": {r: ck.identity() for r, ck in cks.items()},
            "run_order": list(runs),
            "pairs": [list(p) for p in plan.pairs],
            "pairing": pairing.notes,
            "device": env.device,
            "kernel": "c" if env.kernel else "torch",
            "hist_edges": ew.hist_edges() if opts.histogram else None,
            "seconds": round(time.perf_counter() - t0, 3),
            "conventions": {
                "exact": "W1 == W0 after exact widening",
                "atol": f"|W1 - W0| <= {opts.atol} (Mukherjee et al. 2025)",
                "rtol": f"|W1 - W0| <= {opts.eta} * max(|W0|, |W1|) (Zhu et al. 2025)",
            },
            "warnings": notes,
        }
    finally:
        torch.set_num_threads(caller_threads)  # jobs set the plan's count (process-wide in torch)
        b.close()
        for ck in cks.values():
            ck.close()
    for w in notes:
        warnings.warn(w, UpdeltaWarning, stacklevel=2)
    return build_result(records, pair_records, meta, tables)
