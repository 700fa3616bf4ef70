"""Per-job compute: pure functions of a picklable job (`plan`), run by any executor.

- `run_job(CheapJob) -> CheapPart`: blocks of `job.block` elements are read from the base once and
  from every run once and pushed through one fused pass (the C kernel `updelta._fused` on CPU,
  `metrics.elementwise.partial_sums` in torch on CUDA or without the kernel); the part keeps the
  partial sums of every block.
- `tensor_records(spec, parts) -> TensorRecords`: the parts of one tensor, added in block order (the
  same additions, in the same order, as one sequential pass), turned into one record per run and
  one per run pair, plus warnings.
- `run_spectral_job(SpectralJob) -> {run: columns}`: materialises W0 once and each W1 in turn (with
  `job.lens`, each run's top directions under `jobs_lens.KEY`, for the logit lens).

Buffers live for one job; files come from the per-process reader cache (`io.locations`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from . import jobs_lens as lens
from . import prefetch
from . import jobs_where as where
from .io.locations import TensorLocation, open_reader
from .metrics import elementwise as ew
from .metrics import pairwise as pw
from .plan import CheapJob, SpectralJob, TensorSpec

try:  # the optional C kernel (see setup.py); the torch path gives the same numbers
    from . import _fused
except ImportError:  # pragma: no cover - exercised when no compiler was available at install
    _fused = None

KERNEL_KIND = {"float32": 0, "bfloat16": 1}
KERNEL_DTYPES = ("float32", "bfloat16", "float16")


def use_threads(n: int) -> None:
    """Give the calling thread's torch ops `n` intra-op (BLAS/OpenMP) threads.

    torch keeps one process-wide count that each thread picks up, so jobs that run side by side
    must ask for the same `n` (the plan gives every job the same count); the scan restores the
    caller's count when it ends."""
    if n > 0 and torch.get_num_threads() != n:
        torch.set_num_threads(n)


def raw_to_torch(raw: np.ndarray, dtype: str) -> torch.Tensor:
    """A torch view of raw storage read by `io` (bf16 arrives as uint16 bits)."""
    if dtype == "bfloat16":
        return torch.from_numpy(raw.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(raw)


def _kernel_input(raw: np.ndarray, dtype: str):
    """(array, kind) for the C kernel, widening fp16 to float32."""
    if dtype in KERNEL_KIND:
        return raw, KERNEL_KIND[dtype]
    return raw.astype(np.float32), 0


def _widen_f32(raw: np.ndarray, dtype: str, out: np.ndarray) -> np.ndarray:
    n = raw.size
    if dtype == "float32":
        return raw
    if dtype == "bfloat16":
        _fused.widen_bf16(raw, out[:n])
        return out[:n]
    out[:n] = raw.astype(np.float32)
    return out[:n]


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
    where: object = None  # jobs_where.WherePart: row/column reductions (docs/metrics.md, Where an update sits)


@dataclass
class TensorRecords:
    records: list[dict]
    pair_records: list[dict]
    nonfinite: list[str]  # "name (run: base N, ft M)" for tensors with NaN/Inf
    tables: dict = field(default_factory=dict)  # heads, pairs_heads, neurons rows (jobs_where.finish)


class _Buffers:
    """Reusable buffers of one job."""

    def __init__(self):
        self.store: dict = {}

    def get(self, key, nbytes: int, dtype=np.uint8) -> np.ndarray:
        buf = self.store.get(key)
        if buf is None or buf.nbytes < nbytes:
            buf = self.store[key] = np.empty(nbytes // np.dtype(dtype).itemsize + 1, dtype=dtype)
        return buf


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
    fused = job.kernel and _fused is not None and all(
        d in KERNEL_DTYPES for d in (t.base.dtype, *(s.loc.dtype for s in t.sides)))
    block = _kernel_block if fused else _torch_block
    bufs = _Buffers()
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


def _block_reads(job: CheapJob, base, readers: dict, bufs: _Buffers):
    """(start, count, base raw, {run: raw}) for each block of `job`, read in this thread into `bufs`."""
    t, end = job.tensor, job.start + job.count
    size = {s.run: s.loc.itemsize for s in t.sides}
    for start in range(job.start, end, job.block):
        cnt = min(job.block, end - start)
        raw0 = base.read(start, cnt, bufs.get("base", cnt * t.base.itemsize))
        raws = {r: rd.read(start, cnt, bufs.get(("run", r), cnt * size[r])) for r, rd in readers.items()}
        yield start, cnt, raw0, raws


def _kernel_block(job: CheapJob, raw0, raws, part: CheapPart, bufs: _Buffers) -> None:
    t, o = job.tensor, job.opts
    dtypes = {s.run: s.loc.dtype for s in t.sides}
    fused = where.kernel_sums(job, raw0, raws, part, part.hists)  # None: this block has no where work
    a, ka = _kernel_input(raw0, t.base.dtype)
    for r, raw in raws.items():
        if fused is not None:
            part.sums[r].append(fused[r])
            continue
        b, kb = _kernel_input(raw, dtypes[r])
        part.sums[r].append(_fused.stats(a, ka, b, kb, o.atol, o.eta, part.hists.get(r)))
    if t.pairs:
        n = raw0.size
        w0 = _widen_f32(raw0, t.base.dtype, bufs.get("w0", n * 4, np.float32))
        wide = {r: _widen_f32(raw, dtypes[r], bufs.get(("w", r), n * 4, np.float32)) for r, raw in raws.items()}
        for ra, rb in t.pairs:
            part.pair_sums[(ra, rb)].append(_fused.pair(w0, wide[ra], wide[rb], o.atol, o.eta))


def _torch_block(job: CheapJob, raw0, raws, part: CheapPart, bufs: _Buffers) -> None:
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


def _added_fro(side, numel: int, block: int, bufs: _Buffers) -> float:
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


def _changed(s: ew.Sums) -> dict[str, int]:
    return {"exact": s.used - s.eq, "atol": s.used - s.le_atol, "rtol": s.used - s.le_rtol}


def tensor_ids(t: TensorSpec) -> dict:
    """The id columns of tensor `t`'s per-run records (every record producer starts from these)."""
    i = t.info
    return {"name": t.name, "layer": i.layer, "expert": i.expert, "component": i.component, "module": i.module,
            "param": i.param, "tower": i.tower, "shape": list(t.shape), "numel": t.numel,
            "dtype_base": getattr(t.base, "stored", "") or t.base.dtype}  # GGUF: the ggml type ("Q4_K")


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
        rec = {"run": r, **common, "dtype_ft": getattr(side.loc, "stored", "") or side.loc.dtype, "resized": side.added_rows > 0,
               "added_rows": side.added_rows, "added_fro": added.get(r, 0.0),
               "tied": bool(side.tied or t.base_tied), **ew.finalize(s)}
        if r in hists:
            rec["hist"] = hists[r].tolist()
        if s.nonfinite_base or s.nonfinite_ft:
            nonfinite.append(f"{t.name} ({r}: base {s.nonfinite_base}, ft {s.nonfinite_ft})")
        recs.append(rec)
    prec = []
    for (ra, rb), ps in psums.items():
        ca, cb = _changed(sums[ra]), _changed(sums[rb])
        n = max(ps.used, 1)
        exp = {c: ca[c] * cb[c] / n for c in pw.CONVS}
        prec.append({**pair_ids(t, ra, rb), **pw.finalize_pair(ps, ca, cb, exp, ps.used)})
    return TensorRecords(recs, prec, nonfinite, where.finish(t, parts, recs))


def _materialize(loc: TensorLocation, numel: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """The tensor widened to float32 (float64 when stored so) on `device`."""
    return _read_wide(loc, numel, shape, device)[0]


def _read_wide(loc: TensorLocation, numel: int, shape: tuple[int, ...], device: torch.device,
               digest: bool = False) -> tuple[torch.Tensor, str | None]:
    """(the tensor widened to float32 (float64 when stored so) on `device`, a digest of its stored bytes or None).
    The stored bytes are freed before the caller goes on; on the CPU they widen in one copy."""
    raw = open_reader(loc).read(0, numel)
    key = None
    if digest:
        from .spectral_cache import tensor_digest
        key = tensor_digest(raw)
    wide = torch.float64 if loc.dtype == "float64" else torch.float32
    w = raw_to_torch(raw, loc.dtype)
    w = w.to(device=device, dtype=wide)
    del raw
    return w.reshape(shape), key


def run_spectral_job(job: SpectralJob) -> dict[str, dict]:
    """{run: spectral columns} of one tensor: W0 read once, each run's W1 in turn (one W1 alive at a time).

    `full` mode: W0's decomposition is computed at most once for all runs (when some run needs it) and, with
    `opts.cache`, read from / kept in the on-disk cache under a digest of W0's bytes (`updelta.spectral_cache`)."""
    from .metrics import spectral

    use_threads(job.threads)
    t, dev, opts = job.tensor, torch.device(job.device), job.opts
    if not any(isinstance(s.loc, TensorLocation) for s in t.sides):  # adapter sides only (docs/adapters.md)
        from .jobs_factored import spectral_only
        out = spectral_only(job)
        for s in t.sides:
            lens.factored(job, out[s.run], t, s.loc)
        return out
    full = opts.spectral == "full"
    if not full and all(isinstance(s.loc, TensorLocation) for s in t.sides) and len(t.shape) == 2:
        return _fast_from_updates(job)
    w0, digest = _read_wide(t.base, t.numel, t.shape, dev, digest=full and opts.cache)
    if t.transposed:
        w0 = w0.transpose(-1, -2)
    w0 = w0.contiguous()
    base = None
    if full and w0.ndim == 2:
        from .spectral_cache import base_provider, decomp_key, kept_k
        key = None if digest is None else decomp_key(digest, t.base.dtype, t.shape, t.transposed,
                                                      spectral.work_dtype(opts, w0.dtype), kept_k(opts, w0.shape))
        base = base_provider(w0, opts, key)
    out = {}
    for side in t.sides:
        if not isinstance(side.loc, TensorLocation):  # an adapter's factors (docs/adapters.md)
            from .jobs_factored import spectral_side
            out[side.run] = spectral_side(w0, t, side.loc, opts)
            lens.factored(job, out[side.run], t, side.loc)
            continue
        w1 = _materialize(side.loc, t.numel, t.shape, dev)
        if t.transposed:
            w1 = w1.transpose(-1, -2).contiguous()
        out[side.run] = spectral.spectral_columns(w0, w1, opts, base)
        if job.lens:
            lens.dense(job, out[side.run], w1 - w0)
        del w1
    return out


def _stored(loc: TensorLocation, numel: int, device: torch.device) -> torch.Tensor:
    """The tensor's elements as stored (bf16/fp16/fp32/fp64, flat) on `device`."""
    return raw_to_torch(open_reader(loc).read(0, numel), loc.dtype).to(device)


def _fast_from_updates(job: SpectralJob) -> dict[str, dict]:
    """`fast` mode needs the update only: W0 stays in its storage dtype, and each run's D = W1 - W0 is widened and
    subtracted in chunks into one float32 (float64 when either side is stored so) buffer: the same elements as
    `w1.float() - w0.float()`, with one float copy of the tensor alive instead of three."""
    from .metrics import spectral

    t, dev, opts = job.tensor, torch.device(job.device), job.opts
    w0 = _stored(t.base, t.numel, dev)
    out = {}
    for side in t.sides:
        w1 = _stored(side.loc, t.numel, dev)
        wide = torch.float64 if torch.float64 in (w0.dtype, w1.dtype) else torch.float32
        d = torch.empty(t.numel, dtype=wide, device=dev)
        step = 1 << 20
        for a in range(0, t.numel, step):
            b = min(t.numel, a + step)
            torch.sub(w1[a:b].to(wide), w0[a:b].to(wide), out=d[a:b])
        del w1
        d = d.reshape(t.shape)
        if t.transposed:
            d = d.T.contiguous()
        out[side.run] = spectral.update_columns(d, opts)
        lens.dense(job, out[side.run], d)
        del d
    return out
