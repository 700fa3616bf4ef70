"""W0's decomposition, computed once per tensor and kept on disk for later scans on the same base.

`full` spectral mode needs an exact SVD of every base matrix W0 (`metrics.spectral.base_decomposition`); it is
the same for every run of a compare or trajectory and for every later command on the same base. Within a command
`scan.jobs.spectral.run_spectral_job` computes it at most once per tensor (lazily: not at all when no run changed the tensor);
across commands it is stored in `io.decomp_cache.DecompCache` under a key made of

- a BLAKE2b-256 digest of every byte of the tensor as stored (taken by `scan.jobs.read.read_wide` on the bytes it has just
  read for the decomposition; `tensor_digest`), so a base file changed anywhere, even keeping its name, size and
  the first and last bytes that the checkpoint fingerprint samples, is never served from the cache;
- the storage dtype and shape, the orientation (GPT-2 Conv1D weights are transposed), the working dtype (float32,
  or float64 with `--spectral-float64`), the number k of leading right vectors kept (max(topk, offprincipal_k)),
  and `FORMAT`, bumped whenever what is stored changes.

What is stored (docs/metrics.md, "Decompositions and the base cache"): all singular values, and the whole U0 (it is
needed whole, for the intruder dimensions) except on the tall route, where the whole V0 (r x r) is kept instead and
U0's columns are rebuilt from W0; plus the top k rows of V0^T. So an entry is at most about as large as W0 in the
working dtype. `--no-cache` (`DiffOptions.cache = False`) neither reads nor writes. Only `full` mode uses it;
`fast` never decomposes W0, so it hashes nothing.
"""
from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np
import torch

from updelta.io.decomp_cache import DecompCache
from updelta.options import DiffOptions

FORMAT = 1
DIGEST = "blake2b-256"


def tensor_digest(raw: np.ndarray) -> str:
    """Hex BLAKE2b-256 digest of the raw bytes of a tensor (about 1 GB/s on one core)."""
    return hashlib.blake2b(memoryview(np.ascontiguousarray(raw)).cast("B"), digest_size=32).hexdigest()


def decomp_key(digest: str, dtype: str, shape: tuple[int, ...], transposed: bool, work: torch.dtype, k: int) -> str:
    """The cache key of one decomposition (hex)."""
    text = f"updelta-decomp/{FORMAT}/{DIGEST}:{digest}/{dtype}/{'x'.join(map(str, shape))}/" \
           f"{'T' if transposed else 'N'}/{str(work).replace('torch.', '')}/k{k}"
    return hashlib.blake2b(text.encode(), digest_size=32).hexdigest()


def kept_k(opts: DiffOptions, shape: tuple[int, ...]) -> int:
    return min(max(int(opts.topk), int(opts.offprincipal_k), 1), min(shape))


def base_provider(w0: torch.Tensor, opts: DiffOptions, key: str | None) -> Callable:
    """A zero-argument function giving `base_decomposition(w0, opts)`, computed (or read from the cache under
    `key`; None: no cache) on the first call only, and stored after computing."""
    from updelta.metrics.spectral import Decomp, base_decomposition, work_dtype  # torch: loaded only on this path

    memo: list = []

    def get():
        if memo:
            return memo[0]
        dt = work_dtype(opts, w0.dtype)
        cache = _cache() if key is not None and opts.cache else None
        dec = None
        if cache is not None:
            got = cache.get(key)
            if got is not None and _valid(got, tuple(w0.shape)):
                w = w0.to(dt)
                dec = Decomp.from_parts(w, {n: torch.from_numpy(a).to(device=w.device, dtype=dt)
                                             for n, a in got.items()})
        if dec is None:
            dec = base_decomposition(w0, opts)
            if cache is not None:
                k = kept_k(opts, tuple(w0.shape))
                cache.put(key, {n: t.detach().cpu().contiguous().numpy() for n, t in dec.parts(k).items()})
        memo.append(dec)
        return dec

    return get


def _valid(arrays: dict[str, np.ndarray], shape: tuple[int, int]) -> bool:
    """The stored arrays have the shapes of a decomposition of a `shape` matrix (a cheap guard on top of the key)."""
    m, n = shape
    r = min(m, n)
    S, U, Vh = arrays.get("S"), arrays.get("U"), arrays.get("Vh")
    if S is None or S.shape != (r,) or (U is None and Vh is None) or set(arrays) - {"S", "U", "Vh"}:
        return False
    if U is not None and U.shape != (m, r):
        return False
    if Vh is not None and (Vh.ndim != 2 or Vh.shape[1] != n or Vh.shape[0] > r or (U is None and Vh.shape[0] != r)):
        return False
    return all(np.isfinite(a).all() for a in arrays.values())


def _cache():

    return DecompCache()
