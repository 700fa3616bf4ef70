"""The spectral columns of one 2-D tensor: a pure function of a picklable `plan.SpectralJob`.

`run_spectral_job(SpectralJob) -> {run: columns}` materialises W0 once and each W1 in turn (with `job.lens`,
each run's top directions under `lens.KEY`, for the logit lens). `fast` mode needs only the update and keeps
W0 in its storage dtype; `full` mode decomposes W0 once (`spectral_cache`). Adapter sides go to `factored`.
"""
from __future__ import annotations

import numpy as np
import torch

from updelta.io.locations import TensorLocation
from updelta.io.readers import open_reader
from updelta.metrics import lens as ml
from updelta.metrics import spectral
from updelta.metrics.spectral import full_bytes, streamed_columns
from updelta.metrics.streamed import streamed_directions
from updelta.options import AUTO_MEMORY, memory_bytes
from updelta.scan.jobs import lens
from updelta.scan.jobs.factored import spectral_only, spectral_side
from updelta.scan.jobs.read import materialize, raw_to_torch, read_wide, stored, use_threads
from updelta.scan.jobs.spectral_cache import base_provider, decomp_key, kept_k
from updelta.scan.plan import SpectralJob

BASIS_FLOOR = 64 << 20  # the streamed solver's basis and Gram matrix get half the budget, at least this
REFUSED = "_memory_refused"  # a run's spectral columns' key of the note of a tensor refused under --max-memory


def run_spectral_job(job: SpectralJob) -> dict[str, dict]:
    """{run: spectral columns} of one tensor: W0 read once, each run's W1 in turn (one W1 alive at a time).

    `full` mode: W0's decomposition is computed at most once for all runs (when some run needs it) and, with
    `opts.cache`, read from / kept in the on-disk cache under a digest of W0's bytes (`updelta.scan.jobs.spectral_cache`)."""
    use_threads(job.threads)
    t, dev, opts = job.tensor, torch.device(job.device), job.opts
    if not any(isinstance(s.loc, TensorLocation) for s in t.sides):  # adapter sides only (docs/adapters.md)
        out = spectral_only(job)
        for s in t.sides:
            lens.factored(job, out[s.run], t, s.loc)
        return out
    full = opts.spectral == "full"
    budget = memory_bytes(opts.max_memory)
    if not full and all(isinstance(s.loc, TensorLocation) for s in t.sides) and len(t.shape) == 2:
        if fast_bytes(t) > (AUTO_MEMORY if budget is None else budget):
            return _fast_streamed(job, AUTO_MEMORY if budget is None else budget)
        return _fast_from_updates(job)
    if full and budget is not None and len(t.shape) == 2:
        need = full_bytes(t.shape, opts, t.numel * max(_itemsize(s.loc) for s in t.sides if hasattr(s.loc, "dtype")))
        if need > budget:
            note = (f"{t.name}: spectral full needs about {need} bytes ({need / (1 << 20):.1f} MiB) > --max-memory "
                    f"{opts.max_memory} ({budget} bytes); its full columns are null (raise --max-memory, or "
                    f"--spectral fast streams it)")
            return {s.run: {REFUSED: note} for s in t.sides}
    w0, digest = read_wide(t.base, t.numel, t.shape, dev, digest=full and opts.cache)
    if t.transposed:
        w0 = w0.transpose(-1, -2)
    w0 = w0.contiguous()
    base = None
    if full and w0.ndim == 2:
        key = None if digest is None else decomp_key(digest, t.base.dtype, t.shape, t.transposed,
                                                      spectral.work_dtype(opts, w0.dtype), kept_k(opts, w0.shape))
        base = base_provider(w0, opts, key)
    out = {}
    for side in t.sides:
        if not isinstance(side.loc, TensorLocation):  # an adapter's factors (docs/adapters.md)
            out[side.run] = spectral_side(w0, t, side.loc, opts)
            lens.factored(job, out[side.run], t, side.loc)
            continue
        w1 = materialize(side.loc, t.numel, t.shape, dev)
        if t.transposed:
            w1 = w1.transpose(-1, -2).contiguous()
        out[side.run] = spectral.spectral_columns(w0, w1, opts, base)
        if job.lens:
            lens.dense(job, out[side.run], w1 - w0)
        del w1
    return out


def _fast_from_updates(job: SpectralJob) -> dict[str, dict]:
    """`fast` mode needs the update only: W0 stays in its storage dtype, and each run's D = W1 - W0 is widened and
    subtracted in chunks into one float32 (float64 when either side is stored so) buffer: the same elements as
    `w1.float() - w0.float()`, with one float copy of the tensor alive instead of three."""
    t, dev, opts = job.tensor, torch.device(job.device), job.opts
    w0 = stored(t.base, t.numel, dev)
    out = {}
    for side in t.sides:
        w1 = stored(side.loc, t.numel, dev)
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


def _itemsize(loc) -> int:
    return {"float64": 8, "float32": 4}.get(getattr(loc, "dtype", "float32"), 2)


def fast_bytes(t) -> int:
    """What `_fast_from_updates` holds for tensor `t` at once: W0 and one W1 as stored and D widened."""
    wide = 8 if "float64" in (t.base.dtype, *(s.loc.dtype for s in t.sides)) else 4
    return t.numel * (_itemsize(t.base) + max(_itemsize(s.loc) for s in t.sides) + wide)


def _fast_streamed(job: SpectralJob, budget: int) -> dict[str, dict]:
    """`fast` mode without D whole (docs/metrics.md, "Streamed spectra"): each pass reads row blocks of W0 and W1
    through the readers and forms D's rows as `_fast_from_updates` forms its elements (widened, then subtracted);
    the solve is `metrics.streamed`. The rows are those of the stored orientation (a transposed tensor streams D^T:
    the same singular values; the lens's output-side vectors are then the Ritz vectors themselves)."""
    t, opts = job.tensor, job.opts
    M, N = t.shape
    r0 = open_reader(t.base)
    out = {}
    for side in t.sides:
        r1 = open_reader(side.loc)
        wide = torch.float64 if "float64" in (t.base.dtype, side.loc.dtype) else torch.float32

        def rows(a: int, b: int, r1=r1, loc=side.loc, wide=wide) -> torch.Tensor:
            x0 = raw_to_torch(r0.read(a * N, (b - a) * N), t.base.dtype).to(wide)
            x1 = raw_to_torch(r1.read(a * N, (b - a) * N), loc.dtype).to(wide)
            return (x1 - x0).reshape(b - a, N)

        kl = int(opts.lens_k) if job.lens else 0
        cols, res = streamed_columns(rows, (M, N), opts, max(budget // 2, BASIS_FLOOR), keep_vectors=kl)
        out[side.run] = cols
        if kl and res is not None:
            cols[lens.KEY] = _directions(rows, M, N, res, t.transposed, kl)
    return out


def _directions(rows, M: int, N: int, res, transposed: bool, k: int) -> "ml.Directions":
    """The lens's top directions of a streamed update: left vectors of D ([out, k], float64)."""
    out_side = N if transposed else M
    if res.basis is None or res.fro2 == 0.0:
        return ml.Directions.empty(out_side)
    Y, s, resid = streamed_directions(rows, M, N, res.basis[:, :k])
    U = res.basis[:, :k] if transposed else Y
    order = np.argsort(-s, kind="stable")
    keep = s[order] > max(M, N) * torch.finfo(torch.float32).eps * s[order[0]]
    order = order[keep]
    return ml.Directions(s[order], U.numpy()[:, order], resid[order])
