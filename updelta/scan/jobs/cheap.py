"""The cheap pass of one tensor: pure functions of a picklable `plan.CheapJob`, run by any executor.

- `run_job(CheapJob) -> CheapPart`: blocks of `job.block` elements are read from the base once and
  from every run once and pushed through one fused pass (the C kernel, `scan.jobs.kernel`, on CPU;
  `metrics.elementwise.partial_sums` in torch on CUDA or without the kernel); the part keeps the
  partial sums of every block.
- `tensor_records(spec, parts) -> TensorRecords`: the parts of one tensor, added in block order (the
  same additions, in the same order, as one sequential pass), turned into one record per run and
  one per run pair, plus warnings.

Buffers live for one job; files come from the per-process reader cache (`io.readers`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from updelta.io.readers import open_reader
from updelta.metrics import elementwise as ew, pairwise as pw
from updelta.scan.jobs import kernel, prefetch, where
from updelta.scan.jobs.read import Buffers, raw_to_torch, use_threads
from updelta.scan.plan import CheapJob, TensorSpec


@dataclass
class CheapPart:
    """Partial sums of one cheap job: per run and per pair, one tuple per block, in block order."""

    tensor: int
    part: int
    sums: dict[str, list[tuple]]
    pair_sums: dict[tuple[str, str], list[tuple]]
    hists: dict[str, np.ndarray] = field(default_factory=dict)
    added_fro: dict[str, float] = field(default_factory=dict)  # last part only
    nbytes: int = 0
    where: object = None  # where.WherePart: row/column reductions (docs/metrics.md, Where an update sits)


@dataclass
class TensorRecords:
    records: list[dict]
    pair_records: list[dict]
    nonfinite: list[str]  # "name (run: base N, ft M)" for tensors with NaN/Inf
    tables: dict = field(default_factory=dict)  # heads, pairs_heads, neurons rows (where.finish)


def run_job(job: CheapJob) -> CheapPart:
    """The cheap partial sums of elements [job.start, job.start + job.count) of one tensor."""
    use_threads(job.threads)
    t, opts = job.tensor, job.opts
    base = open_reader(t.base)
    sides = {s.run: s for s in t.sides}
    readers = {r: open_reader(s.loc) for r, s in sides.items()}
    part = CheapPart(t.index, job.part, {r: [] for r in sides}, {p: [] for p in t.pairs})
    if opts.histogram:
        part.hists = {r: np.zeros(ew.HIST_BINS, dtype=np.int64) for r in sides}
    part.where = where.start(job)
    fused = job.kernel and kernel.accepts(t.base.dtype, *(s.loc.dtype for s in t.sides))
    block = _kernel_block if fused else _torch_block
    bufs = Buffers()
    if prefetch.wanted(job):  # CUDA: pinned buffers, the next block read while the device computes this one
        reads = prefetch.block_reads(job, base, readers)
    else:
        reads = _block_reads(job, base, readers, bufs)
    for start, cnt, raw0, raws in reads:
        part.nbytes += raw0.nbytes + sum(x.nbytes for x in raws.values())
        block(job, raw0, raws, part, bufs)
    if job.part == job.parts - 1:
        part.added_fro = {s.run: _added_fro(s, t.numel, job.block, bufs) for s in t.sides}
    return part


def _block_reads(job: CheapJob, base, readers: dict, bufs: Buffers):
    """(start, count, base raw, {run: raw}) for each block of `job`, read in this thread into `bufs`."""
    t, end = job.tensor, job.start + job.count
    size = {s.run: s.loc.itemsize for s in t.sides}
    for start in range(job.start, end, job.block):
        cnt = min(job.block, end - start)
        raw0 = base.read(start, cnt, bufs.get("base", cnt * t.base.itemsize))
        raws = {r: rd.read(start, cnt, bufs.get(("run", r), cnt * size[r])) for r, rd in readers.items()}
        yield start, cnt, raw0, raws


def _kernel_block(job: CheapJob, raw0, raws, part: CheapPart, bufs: Buffers) -> None:
    t, o = job.tensor, job.opts
    dtypes = {s.run: s.loc.dtype for s in t.sides}
    fused = where.kernel_sums(job, raw0, raws, part, part.hists)  # None: this block has no where work
    a, ka = kernel.kernel_input(raw0, t.base.dtype)
    for r, raw in raws.items():
        if fused is not None:
            part.sums[r].append(fused[r])
            continue
        b, kb = kernel.kernel_input(raw, dtypes[r])
        part.sums[r].append(kernel.stats(a, ka, b, kb, o.atol, o.eta, part.hists.get(r)))
    if t.pairs:
        n = raw0.size
        w0 = kernel.widen_f32(raw0, t.base.dtype, bufs.get("w0", n * 4, np.float32))
        wide = {r: kernel.widen_f32(raw, dtypes[r], bufs.get(("w", r), n * 4, np.float32)) for r, raw in raws.items()}
        for ra, rb in t.pairs:
            part.pair_sums[(ra, rb)].append(kernel.pair(w0, wide[ra], wide[rb], o.atol, o.eta))


def _torch_block(job: CheapJob, raw0, raws, part: CheapPart, bufs: Buffers) -> None:
    t, o, dev = job.tensor, job.opts, torch.device(job.device)
    dtypes = {s.run: s.loc.dtype for s in t.sides}
    w0 = raw_to_torch(raw0, t.base.dtype).to(dev)
    ws = {r: raw_to_torch(raw, dtypes[r]).to(dev) for r, raw in raws.items()}
    for r, w in ws.items():
        h = torch.zeros(ew.HIST_BINS, dtype=torch.int64, device=dev) if r in part.hists else None
        part.sums[r].append(ew.partial_sums(w0, w, o.atol, o.eta, h))
        if h is not None:
            part.hists[r] += h.cpu().numpy()
    for ra, rb in t.pairs:
        part.pair_sums[(ra, rb)].append(pw.pair_partial_sums(w0, ws[ra], ws[rb], o.atol, o.eta))
    where.block(job, w0, ws, part)


def _added_fro(side, numel: int, block: int, bufs: Buffers) -> float:
    """||added rows||_F of a resized run tensor (finite elements), 0 when nothing was added."""
    if not side.added_rows:
        return 0.0
    reader, n, ss = open_reader(side.loc), side.loc.numel, 0.0
    for s in range(numel, n, block):
        raw = reader.read(s, min(block, n - s), bufs.get("added", min(block, n - s) * side.loc.itemsize))
        x = raw_to_torch(raw, side.loc.dtype).double()
        x = x[torch.isfinite(x)]
        ss += float((x * x).sum())
    return math.sqrt(ss)


def changed(s: ew.Sums) -> dict[str, int]:
    return {"exact": s.used - s.eq, "atol": s.used - s.le_atol, "rtol": s.used - s.le_rtol}


def tensor_ids(t: TensorSpec) -> dict:
    """The id columns of tensor `t`'s per-run records (every record producer starts from these)."""
    i = t.info
    return {"name": t.name, "layer": i.layer, "expert": i.expert, "component": i.component, "module": i.module,
            "param": i.param, "tower": i.tower, "shape": list(t.shape), "numel": t.numel,
            "dtype_base": t.base.stored or t.base.dtype}  # GGUF: the ggml type ("Q4_K")


def pair_ids(t: TensorSpec, ra: str, rb: str) -> dict:
    """The id columns of tensor `t`'s record for the run pair (ra, rb)."""
    i = t.info
    return {"run_a": ra, "run_b": rb, "name": t.name, "layer": i.layer, "expert": i.expert, "component": i.component,
            "module": i.module, "param": i.param, "tower": i.tower, "numel": t.numel}


def tensor_records(t: TensorSpec, parts: list[CheapPart]) -> TensorRecords:
    """One record per run and per pair of tensor `t` from its parts (in part order)."""
    parts = sorted(parts, key=lambda p: p.part)
    sums = {s.run: ew.Sums() for s in t.sides}
    psums = {p: pw.PairSums() for p in t.pairs}
    for p in parts:  # block order: the same additions as one sequential pass
        for r, blocks in p.sums.items():
            for b in blocks:
                sums[r].add(b)
        for pr, blocks in p.pair_sums.items():
            for b in blocks:
                psums[pr].add(b)
    hists = {}
    for p in parts:
        for r, h in p.hists.items():
            hists[r] = h.copy() if r not in hists else hists[r] + h
    added = parts[-1].added_fro if parts else {}
    common = tensor_ids(t)
    recs, nonfinite = [], []
    for side in t.sides:
        r, s = side.run, sums[side.run]
        rec = {"run": r, **common, "dtype_ft": side.loc.stored or side.loc.dtype, "resized": side.added_rows > 0,
               "added_rows": side.added_rows, "added_fro": added.get(r, 0.0),
               "tied": bool(side.tied or t.base_tied), **ew.finalize(s)}
        if r in hists:
            rec["hist"] = hists[r].tolist()
        if s.nonfinite_base or s.nonfinite_ft:
            nonfinite.append(f"{t.name} ({r}: base {s.nonfinite_base}, ft {s.nonfinite_ft})")
        recs.append(rec)
    prec = []
    for (ra, rb), ps in psums.items():
        ca, cb = changed(sums[ra]), changed(sums[rb])
        n = max(ps.used, 1)
        exp = {c: ca[c] * cb[c] / n for c in pw.CONVS}
        prec.append({**pair_ids(t, ra, rb), **pw.finalize_pair(ps, ca, cb, exp, ps.used)})
    return TensorRecords(recs, prec, nonfinite, where.finish(t, parts, recs))
