"""The spectral columns of one 2-D tensor: a pure function of a picklable `plan.SpectralJob`.

`run_spectral_job(SpectralJob) -> {run: columns}` materialises W0 once and each W1 in turn (with `job.lens`,
each run's top directions under `lens.KEY`, for the logit lens). `fast` mode needs only the update and keeps
W0 in its storage dtype; `full` mode decomposes W0 once (`spectral_cache`). Adapter sides go to `factored`.
"""
from __future__ import annotations

import torch

from updelta.io.locations import TensorLocation
from updelta.metrics import spectral
from updelta.scan.jobs import lens
from updelta.scan.jobs.factored import spectral_only, spectral_side
from updelta.scan.jobs.read import materialize, read_wide, stored, use_threads
from updelta.scan.jobs.spectral_cache import base_provider, decomp_key, kept_k
from updelta.scan.plan import SpectralJob


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
    if not full and all(isinstance(s.loc, TensorLocation) for s in t.sides) and len(t.shape) == 2:
        return _fast_from_updates(job)
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
