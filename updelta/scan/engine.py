"""The streaming scan: checkpoints in, one record per (run, tensor) and per (pair, tensor) out.

Data flow: `open_checkpoint` (files) -> `pair_checkpoints` (names) -> `plan.make_plan` (picklable
per-tensor jobs) -> an executor (`executors`) runs `scan.jobs.cheap.run_job` over the cheap jobs and
`scan.jobs.spectral.run_spectral_job` over the 2-D tensors -> `scan.jobs.cheap.tensor_records` -> `Result`.

Runs with a base of their own (`run_bases`, docs/inputs.md, Per-run bases) are grouped by base identity
(`runbases`): each group is paired, planned and run as above, and the records are merged in tensor order.

Memory is bounded by the blocks in flight (a few per worker) and, with spectral work, by one
materialised tensor per worker (the largest ones never side by side, see `executors`), not by
model size or the number of runs. Warnings (non-finite values) go to `Result.warnings` and to
`warnings.warn(UpdeltaWarning)`; nothing here prints.
"""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass

import torch

from updelta._version import __version__
from updelta.errors import UpdeltaError, UpdeltaWarning
from updelta.io import Checkpoint, open_checkpoint
from updelta.io.hub import locate
from updelta.io.readers import reader_scope
from updelta.io.tokenizer import fill_token_text
from updelta.metrics import elementwise as ew
from updelta.options import DiffOptions
from updelta.scan.adapters import open_run
from updelta.scan.executors import default_memory_budget, make_executor
from updelta.scan.jobs import kernel, lens as jobs_lens
from updelta.scan.jobs.cheap import run_job, tensor_records
from updelta.scan.jobs.factored import run_factored_job, sort_records
from updelta.scan.jobs import spectral as jobs_spectral
from updelta.scan.jobs.spectral import run_spectral_job
from updelta.scan.pairing import Pairing, pair_checkpoints
from updelta.scan.plan import Env, Plan, make_plan, resolve_pairs, spectral_budget
from updelta.scan.progress import Progress
from updelta.scan.runbases import groups, merge_notes, resolve_run_bases, split_pairs
from updelta.tables.aggregate import towers_note
from updelta.tables.result import build_result


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UpdeltaError("--device cuda: no CUDA device is visible; use --device cpu or auto")
    return torch.device(device)


def machine_env(opts: DiffOptions) -> Env:
    """The device, kernel and thread budget the planner needs, found on this machine."""
    dev = resolve_device(opts.device)
    return Env(device=str(dev), kernel=kernel.available() and dev.type == "cpu", cores=os.cpu_count() or 1,
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
                    if jobs_spectral.REFUSED in c:  # over --max-memory (docs/metrics.md, Streamed spectra)
                        tables.setdefault(REFUSED_TABLE, []).append({"run": r, "note": c.pop(jobs_spectral.REFUSED)})
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


REFUSED_TABLE = "_spectral_refused"  # notes of tensors refused under --max-memory (popped into the warnings)


def nonfinite_warning(notes: list[str]) -> str:
    return (f"non-finite values (NaN/Inf) in {len(notes)} tensor(s); their metrics use the finite elements only: "
            + "; ".join(notes[:10]) + (" ..." if len(notes) > 10 else ""))


@dataclass
class _Group:
    """One base and the runs measured from it: one pairing, one plan, one pass (docs/inputs.md, Per-run bases)."""

    base: Checkpoint
    runs: dict[str, Checkpoint]
    pairs: tuple[tuple[str, str], ...]


def _measure(group: _Group, opts: DiffOptions, env: Env):
    """Pair, plan and run one group: (pairing, plan, records, pair records, non-finite notes, where tables)."""
    pairing: Pairing = pair_checkpoints(group.base, group.runs, opts)
    lens, pairing.notes["lens"] = jobs_lens.setup(group.base, pairing.family, opts)
    plan = make_plan(pairing, group.pairs, opts, env, lens)
    with reader_scope(lend=[f for ck in (group.base, *group.runs.values()) for f in ck.files]):
        records, pair_records, nonfinite, tables = run_plan(plan, opts)
    # token rows as text when the base has a tokenizer.json
    fill_token_text([r for r in tables.get("neurons", []) if r["kind"] == "token"], group.base.path, "index")
    fill_token_text(tables.get(jobs_lens.TABLE, []), group.base.path, "token_id")
    return pairing, plan, records, pair_records, nonfinite, tables


def _merged(outs: list, run_order: list[str], pairs: list[tuple[str, str]]):
    """The records and tables of several groups in one order: tensors as the groups first name them, then runs (or
    pairs) in the order given; one group is returned as it is."""
    if len(outs) == 1:
        return outs[0][2:]
    names: dict[str, int] = {}
    for o in outs:
        for t in o[1].tensors:
            names.setdefault(t.name, len(names))
    ri = {r: i for i, r in enumerate(run_order)}
    pi = {tuple(p): i for i, p in enumerate(pairs)}
    records = sorted((x for o in outs for x in o[2]), key=lambda x: (names.get(x["name"], len(names)), ri[x["run"]]))
    pair_records = sorted((x for o in outs for x in o[3]),
                          key=lambda x: (names.get(x["name"], len(names)), pi[(x["run_a"], x["run_b"])]))
    nonfinite = [n for o in outs for n in o[4]]
    tables: dict[str, list[dict]] = {}
    for o in outs:
        for k, rows in o[5].items():
            tables.setdefault(k, []).extend(rows)
    return records, pair_records, nonfinite, tables


def open_bases(base: Checkpoint, runs: dict[str, str | os.PathLike], run_bases: dict[str, str],
               opts: DiffOptions) -> tuple[list[Checkpoint], list[dict], dict[str, int]]:
    """(distinct bases, common one first; their identities; run -> index of its base). A run-base whose identity
    equals an earlier base's is that base (its checkpoint closed again). The caller closes the bases."""
    bases, idents, base_of = [base], [base.identity()], {}
    try:
        for r in runs:
            if r not in run_bases:
                base_of[r] = 0
                continue
            ck = open_checkpoint(locate(run_bases[r], opts.download))
            ident = ck.identity()
            if ident in idents:
                ck.close()
                base_of[r] = idents.index(ident)
            else:
                bases.append(ck)
                idents.append(ident)
                base_of[r] = len(bases) - 1
    except BaseException:
        for ck in bases[1:]:
            ck.close()
        raise
    return bases, idents, base_of


def base_identities(base: str | os.PathLike, runs: dict[str, str | os.PathLike], opts: DiffOptions,
                    run_bases: dict[str, str] | None = None) -> dict[str, dict]:
    """{run: identity of the base it would be measured from}, reading headers only (checks before a scan)."""
    rb = resolve_run_bases(run_bases, {r: str(p) for r, p in runs.items()})
    b = open_checkpoint(locate(base, opts.download))
    try:
        bases, idents, base_of = open_bases(b, runs, rb, opts)
        for ck in bases[1:]:
            ck.close()
    finally:
        b.close()
    return {r: idents[base_of[r]] for r in runs}


def scan(base: str | os.PathLike, runs: dict[str, str | os.PathLike], opts: DiffOptions,
         pairs: list[tuple[str, str]] | None = None, run_bases: dict[str, str | os.PathLike] | None = None):
    """Open, pair and measure: the `Result` of `base` against every run (name -> path).

    `pairs` restricts the cross-run pairs to those listed (default: every unordered pair). `run_bases`
    ({run: path}) measures those runs from a base of their own (docs/inputs.md, Per-run bases): one pairing and
    one plan per distinct base; cross-run metrics only between runs of the same base.
    """

    if not runs:
        raise UpdeltaError("no fine-tuned checkpoint given; pass at least one NAME=PATH")
    rb = resolve_run_bases({str(k): str(v) for k, v in (run_bases or {}).items()},
                           {r: str(p) for r, p in runs.items()})
    order = list(runs)
    all_pairs = resolve_pairs(order, pairs)
    t0 = time.perf_counter()
    cks: dict[str, Checkpoint] = {}
    b = open_checkpoint(locate(base, opts.download))
    bases: list[Checkpoint] = [b]
    caller_threads = torch.get_num_threads()
    try:
        bases, idents, base_of = open_bases(b, runs, rb, opts)
        for r, p in runs.items():  # an adapter folder is a run against its own base (docs/adapters.md)
            cks[r] = open_run(locate(p, opts.download), bases[base_of[r]])
        labels = {i: ("the common base" if i == 0 else str(bases[i].path)) for i in range(len(bases))}
        kept, skipped = split_pairs(all_pairs, base_of, labels)
        env = machine_env(opts)
        outs, group_notes = [], []
        for g in groups(order, base_of):
            i = base_of[g[0]]
            group = _Group(bases[i], {r: cks[r] for r in g}, tuple(p for p in kept if p[0] in g))
            outs.append(_measure(group, opts, env))
            group_notes.append((g, outs[-1][0].notes))
        records, pair_records, nonfinite, tables = _merged(outs, order, kept)
        pairing_notes = merge_notes(group_notes)
        notes = [nonfinite_warning(nonfinite)] if nonfinite else []
        notes += [n for n in (towers_note(records, opts.towers),) if n]
        notes += sorted({row["note"] for row in tables.pop(REFUSED_TABLE, [])})
        for who, names in pairing_notes.get("unindexed", {}).items():
            notes.append(f"{who}: {len(names)} tensor(s) in shards that the index does not name were left out: "
                         + ", ".join(names[:5]) + (" ..." if len(names) > 5 else ""))
        meta = {
            "updelta_version": __version__,
            "options": opts.as_dict(),
            "base": idents[0],
            "runs": {r: ck.identity() for r, ck in cks.items()},
            "run_order": order,
            "pairs": [list(p) for p in kept],
            "pairing": pairing_notes,
            "device": env.device,
            "kernel": "c" if env.kernel else "torch",
            "hist_edges": ew.hist_edges() if opts.histogram else None,
            "seconds": round(time.perf_counter() - t0, 3),
            "conventions": {
                "exact": "W1 == W0 after exact widening",
                "atol": f"|W1 - W0| <= {opts.atol} (Mukherjee et al. 2025)",
                "rtol": f"|W1 - W0| <= {opts.eta} * max(|W0|, |W1|) (Zhu et al. 2025)",
            },
            "run_bases": {r: idents[base_of[r]] for r in order},
            "pairs_skipped": skipped,
            "warnings": notes,
        }
    finally:
        torch.set_num_threads(caller_threads)  # jobs set the plan's count (process-wide in torch)
        for ck in bases:
            ck.close()
        for ck in cks.values():
            ck.close()
    for w in notes:
        warnings.warn(w, UpdeltaWarning, stacklevel=2)
    return build_result(records, pair_records, meta, tables)
