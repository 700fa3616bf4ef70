"""The streaming engine: checkpoints in, one record per (run, tensor) and per (pair, tensor) out.

Data flow: `open_checkpoint` (files) -> `pair_checkpoints` (names) -> per tensor, blocks of
`block_elems` elements are read from the base once and from every run once, and pushed
through one fused pass (the C kernel `updelta._fused` on CPU, `metrics.elementwise.partial_sums`
in torch on CUDA or without the kernel) -> partial sums -> metric columns -> records.
Spectral work (2-D tensors) is a second pass that materialises one tensor at a time.

Memory is bounded by the blocks in flight (a few per worker thread), not by model size or
the number of runs. Only this module and `io` know about files and devices.
"""
from __future__ import annotations

import math
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ._version import __version__
from .errors import UpdeltaError
from .io import Checkpoint, TensorRef, open_checkpoint
from .metrics import elementwise as ew
from .metrics import pairwise as pw
from .options import DiffOptions
from .pairing import PairedTensor, pair_checkpoints
from .progress import Progress

try:  # the optional C kernel (see setup.py); the torch path gives the same numbers
    from . import _fused
except ImportError:  # pragma: no cover - exercised when no compiler was available at install
    _fused = None

KERNEL_KIND = {"float32": 0, "bfloat16": 1}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UpdeltaError("--device cuda: no CUDA device is visible; use --device cpu or auto")
    return torch.device(device)


def raw_to_torch(raw: np.ndarray, dtype: str) -> torch.Tensor:
    """A torch view of raw storage read by `io` (bf16 arrives as uint16 bits)."""
    if dtype == "bfloat16":
        return torch.from_numpy(raw.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(raw)


def _kernel_input(raw: np.ndarray, dtype: str):
    """(array, kind) for the C kernel, widening fp16 to float32; None when the kernel cannot take it."""
    if dtype in KERNEL_KIND:
        return raw, KERNEL_KIND[dtype]
    if dtype == "float16":
        return raw.astype(np.float32), 0
    return None


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
class _TensorOut:
    records: list[dict]
    pair_records: list[dict]
    nbytes: int


class _Buffers(threading.local):
    """Per-thread reusable read buffers (raw bytes) and float32 widening buffers."""

    def get(self, key, nbytes: int, dtype=np.uint8) -> np.ndarray:
        store = self.__dict__.setdefault("store", {})
        buf = store.get(key)
        if buf is None or buf.nbytes < nbytes:
            buf = store[key] = np.empty(nbytes // np.dtype(dtype).itemsize + 1, dtype=dtype)
        return buf


class Engine:
    """Compute per-tensor and cross-run records for one base and several runs."""

    def __init__(self, base: Checkpoint, runs: dict[str, Checkpoint], opts: DiffOptions,
                 pairs: list[tuple[str, str]] | None = None):
        """`pairs`: the (a, b) run pairs to measure; default every unordered pair in the order given."""
        self.base, self.runs, self.opts = base, runs, opts
        self.device = resolve_device(opts.device)
        self.pairing = pair_checkpoints(base, runs, opts)
        names = list(runs)
        if pairs is None:
            self.pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
        else:
            self.pairs = [(a, b) for a, b in pairs]
            bad = [p for p in self.pairs if p[0] not in runs or p[1] not in runs or p[0] == p[1]]
            if bad:
                raise UpdeltaError(f"pairs {bad}: each pair names two different runs of {names}")
        self._bufs = _Buffers()
        self._use_kernel = _fused is not None and self.device.type == "cpu"
        self.nonfinite: list[str] = []

    # ---- per tensor -------------------------------------------------------------------------
    def _blocks(self, t: PairedTensor):
        n, B = t.numel, max(int(self.opts.block_elems), 1)
        if self.device.type == "cuda":
            B = max(B, 1 << 24)
        for start in range(0, n, B):
            yield start, min(B, n - start)

    def _cheap(self, t: PairedTensor) -> _TensorOut:
        opts = self.opts
        sums = {r: ew.Sums() for r in t.runs}
        psums = {p: pw.PairSums() for p in self.pairs if p[0] in t.runs and p[1] in t.runs}
        hists = {r: np.zeros(ew.HIST_BINS, dtype=np.int64) for r in t.runs} if opts.histogram else {}
        dts = [t.base.dtype] + [s.ref.dtype for s in t.runs.values()]
        fused = self._use_kernel and all(d in ("float32", "bfloat16", "float16") for d in dts)
        nbytes = 0
        for start, cnt in self._blocks(t):
            raw0 = t.base.read(start, cnt, self._bufs.get("base", cnt * t.base.itemsize))
            raws = {r: s.ref.read(start, cnt, self._bufs.get(("run", r), cnt * s.ref.itemsize))
                    for r, s in t.runs.items()}
            nbytes += raw0.nbytes + sum(x.nbytes for x in raws.values())
            if fused:
                self._cheap_block_kernel(t, raw0, raws, sums, psums, hists)
            else:
                self._cheap_block_torch(t, raw0, raws, sums, psums, hists)
        return self._records(t, sums, psums, hists, nbytes)

    def _cheap_block_kernel(self, t, raw0, raws, sums, psums, hists) -> None:
        a, ka = _kernel_input(raw0, t.base.dtype)
        for r, raw in raws.items():
            b, kb = _kernel_input(raw, t.runs[r].ref.dtype)
            sums[r].add(_fused.stats(a, ka, b, kb, self.opts.atol, self.opts.eta, hists.get(r)))
        if psums:
            n = raw0.size
            w0 = _widen_f32(raw0, t.base.dtype, self._bufs.get("w0", n * 4, np.float32))
            wide = {r: _widen_f32(raw, t.runs[r].ref.dtype, self._bufs.get(("w", r), n * 4, np.float32))
                    for r, raw in raws.items()}
            for (ra, rb), ps in psums.items():
                ps.add(_fused.pair(w0, wide[ra], wide[rb], self.opts.atol, self.opts.eta))

    def _cheap_block_torch(self, t, raw0, raws, sums, psums, hists) -> None:
        dev = self.device
        w0 = raw_to_torch(raw0, t.base.dtype).to(dev)
        ws = {r: raw_to_torch(raw, t.runs[r].ref.dtype).to(dev) for r, raw in raws.items()}
        for r, w in ws.items():
            h = torch.zeros(ew.HIST_BINS, dtype=torch.int64, device=dev) if r in hists else None
            sums[r].add(ew.partial_sums(w0, w, self.opts.atol, self.opts.eta, h))
            if h is not None:
                hists[r] += h.cpu().numpy()
        for (ra, rb), ps in psums.items():
            ps.add(pw.pair_partial_sums(w0, ws[ra], ws[rb], self.opts.atol, self.opts.eta))

    def _added_fro(self, t: PairedTensor, r: str) -> float:
        side = t.runs[r]
        if not side.added_rows:
            return 0.0
        start, n, ss = t.numel, side.ref.numel, 0.0
        B = max(int(self.opts.block_elems), 1)
        for s in range(start, n, B):
            raw = side.ref.read(s, min(B, n - s), self._bufs.get("added", min(B, n - s) * side.ref.itemsize))
            x = raw_to_torch(raw, side.ref.dtype).double()
            x = x[torch.isfinite(x)]
            ss += float((x * x).sum())
        return math.sqrt(ss)

    def _records(self, t, sums, psums, hists, nbytes) -> _TensorOut:
        info = t.info
        common = {"name": t.name, "layer": info.layer, "component": info.component, "module": info.module,
                  "param": info.param, "shape": list(t.base.shape), "numel": t.numel,
                  "dtype_base": t.base.dtype}
        recs = []
        for r, s in sums.items():
            side = t.runs[r]
            rec = {"run": r, **common, "dtype_ft": side.ref.dtype, "resized": side.added_rows > 0,
                   "added_rows": side.added_rows, "added_fro": self._added_fro(t, r),
                   "tied": bool(side.tied or t.base_tied), **ew.finalize(s)}
            if r in hists:
                rec["hist"] = hists[r].tolist()
            if s.nonfinite_base or s.nonfinite_ft:
                self.nonfinite.append(f"{t.name} ({r}: base {s.nonfinite_base}, ft {s.nonfinite_ft})")
            recs.append(rec)
        prec = []
        for (ra, rb), ps in psums.items():
            ca, cb = _changed(sums[ra]), _changed(sums[rb])
            n = max(ps.used, 1)
            exp = {c: ca[c] * cb[c] / n for c in pw.CONVS}
            prec.append({"run_a": ra, "run_b": rb, "name": t.name, "layer": info.layer,
                         "component": info.component, "module": info.module, "param": info.param,
                         "numel": t.numel, **pw.finalize_pair(ps, ca, cb, exp, ps.used)})
        return _TensorOut(recs, prec, nbytes)

    # ---- spectral pass ---------------------------------------------------------------------
    def _materialize(self, ref: TensorRef, numel: int, shape: tuple[int, ...]) -> torch.Tensor:
        raw = ref.read(0, numel)
        w = raw_to_torch(raw, ref.dtype).to(self.device)
        w = w.to(torch.float64 if ref.dtype == "float64" else torch.float32)
        return w.reshape(shape)

    def _spectral(self, t: PairedTensor) -> dict[str, dict]:
        from .metrics import spectral

        shape = t.base.shape
        w0 = self._materialize(t.base, t.numel, shape)
        if t.transposed:
            w0 = w0.transpose(-1, -2)
        out = {}
        for r, side in t.runs.items():
            w1 = self._materialize(side.ref, t.numel, shape)
            if t.transposed:
                w1 = w1.transpose(-1, -2)
            out[r] = spectral.spectral_columns(w0.contiguous(), w1.contiguous(), self.opts)
            del w1
        return out

    # ---- driver ------------------------------------------------------------------------------
    def run(self) -> tuple[list[dict], list[dict]]:
        tensors = self.pairing.tensors
        total = sum(t.numel * (t.base.itemsize + sum(s.ref.itemsize for s in t.runs.values())) for t in tensors)
        threads = self.opts.workers or min(os.cpu_count() or 1, 4)
        if self.device.type == "cuda" or self.opts.executor == "serial":
            threads = 1
        records: list[dict] = []
        pair_records: list[dict] = []
        with Progress(total, desc="updelta: reading", unit="B", enabled=None if self.opts.progress else False) as bar:
            if threads > 1 and len(tensors) > 1:
                with ThreadPoolExecutor(threads) as ex:
                    outs = ex.map(self._cheap, tensors)
                    for o in outs:
                        records += o.records
                        pair_records += o.pair_records
                        bar.update(o.nbytes)
            else:
                for t in tensors:
                    o = self._cheap(t)
                    records += o.records
                    pair_records += o.pair_records
                    bar.update(o.nbytes)
        if self.opts.spectral != "off":
            mats = [t for t in tensors if len(t.base.shape) >= 2]
            by_key: dict[tuple[str, str], dict] = {}
            with Progress(len(mats), desc="updelta: spectral", enabled=None if self.opts.progress else False) as bar:
                for t in mats:
                    for r, cols in self._spectral(t).items():
                        by_key[(r, t.name)] = cols
                    bar.update(1)
            for rec in records:
                rec.update(by_key.get((rec["run"], rec["name"]), {}))
        return records, pair_records


def _changed(s: ew.Sums) -> dict[str, int]:
    return {"exact": s.used - s.eq, "atol": s.used - s.le_atol, "rtol": s.used - s.le_rtol}


def scan(base: str | os.PathLike, runs: dict[str, str | os.PathLike], opts: DiffOptions,
         pairs: list[tuple[str, str]] | None = None):
    """Open, pair and measure: the `Result` of `base` against every run (name -> path).

    `pairs` restricts the cross-run pairs to those listed (default: every unordered pair).
    """
    from .result import build_result

    if not runs:
        raise UpdeltaError("no fine-tuned checkpoint given; pass at least one NAME=PATH")
    t0 = time.perf_counter()
    cks: dict[str, Checkpoint] = {}
    b = open_checkpoint(base)
    try:
        for r, p in runs.items():
            cks[r] = open_checkpoint(p)
        eng = Engine(b, cks, opts, pairs)
        records, pair_records = eng.run()
        if eng.nonfinite:
            print(f"updelta: warning: non-finite values (NaN/Inf) in {len(eng.nonfinite)} tensor(s); their metrics "
                  f"use the finite elements only: " + "; ".join(eng.nonfinite[:10])
                  + (" ..." if len(eng.nonfinite) > 10 else ""), file=sys.stderr)
        meta = {
            "updelta_version": __version__,
            "options": opts.as_dict(),
            "base": b.identity(),
            "runs": {r: ck.identity() for r, ck in cks.items()},
            "run_order": list(runs),
            "pairs": [list(p) for p in eng.pairs],
            "pairing": eng.pairing.notes,
            "device": str(eng.device),
            "kernel": "c" if eng._use_kernel else "torch",
            "hist_edges": ew.hist_edges() if opts.histogram else None,
            "seconds": round(time.perf_counter() - t0, 3),
            "conventions": {
                "exact": "W1 == W0 after exact widening",
                "atol": f"|W1 - W0| <= {opts.atol} (Mukherjee et al. 2025)",
                "rtol": f"|W1 - W0| <= {opts.eta} * max(|W0|, |W1|) (Zhu et al. 2025)",
            },
        }
    finally:
        b.close()
        for ck in cks.values():
            ck.close()
    return build_result(records, pair_records, meta)
