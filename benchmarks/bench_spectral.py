"""Benchmark of the spectral modes: `fast` (block Krylov top-k) against exact SVDs.

Per matrix size and update spectrum, on a pair W0 (Gaussian, std 0.02) and W1 = W0 + D:
- `svdvals_s`: torch.linalg.svdvals(D), the exact baseline, measured in the same run;
- `fast_s`:  spectral_columns(W0, W1, spectral="fast") (D, ||D||_F and the top-k solver, k = 16);
- `full_s`:  spectral_columns(W0, W1, spectral="full") (svdvals of D, SVDs with vectors of W0 and W1,
             subspace angles, intruders, off-principal mask): once per case;
- `fast/svdvals`: the ratio of the two (target: <= 0.25 on the Gaussian 4096^2 case);
- `max_rel_err`: max_i |s_i(fast) - s_i(exact)| / s_i(exact), i = 1..16 (target: <= 1e-3).
Spectra: `gauss` (D Gaussian: the flat Marchenko-Pastur spectrum, the hard case for Krylov) and
`power` (D = U diag(s) V^T, s_i = 1/i, U and V random orthonormal).

svdvals and fast are timed alternately `--repeat` times and the minimum is reported (the median
too), because the 2-core machine is shared; the load average is printed before and after.

    .venv/bin/python benchmarks/bench_spectral.py                 # all sizes, fast and full
    .venv/bin/python benchmarks/bench_spectral.py --sizes 1024x1024,4096x4096 --no-full
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

# OpenMP threads that spin while waiting are many times slower on a loaded machine (measured here: a
# 2-thread spectral pass 4.5x slower than 1 thread at load average 3); must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from updelta.metrics import spectral as sp  # noqa: E402
from updelta.metrics.linalg import topk_singular_values  # noqa: E402
from updelta.options import DiffOptions  # noqa: E402

SIZES = [(1024, 1024), (2048, 2048), (4096, 4096), (4096, 11008)]
K = 16


def make_update(kind: str, m: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "gauss":
        return torch.randn(m, n, generator=g) * 1e-3
    if kind == "power":
        r = min(m, n)
        U, _ = torch.linalg.qr(torch.randn(m, r, generator=g))
        V, _ = torch.linalg.qr(torch.randn(n, r, generator=g))
        s = 1.0 / torch.arange(1, r + 1, dtype=torch.float32)
        return (U * s) @ V.T
    raise ValueError(kind)


def timed(f):
    t = time.perf_counter()
    out = f()
    return time.perf_counter() - t, out


def run_case(m: int, n: int, kind: str, repeat: int, full: bool) -> dict:
    d = make_update(kind, m, n, seed=1)
    w0 = torch.randn(m, n, generator=torch.Generator().manual_seed(2)) * 0.02
    w1 = w0 + d
    fast = DiffOptions(spectral="fast", topk=K)
    t_sv, t_fast = [], []
    exact = fast_cols = None
    for _ in range(repeat):
        dt, s = timed(lambda: torch.linalg.svdvals(w1 - w0))
        t_sv.append(dt)
        exact = s.double().numpy()[:K]
        dt, fast_cols = timed(lambda: sp.spectral_columns(w0, w1, fast))
        t_fast.append(dt)
    res = topk_singular_values(w1 - w0, K, rtol=sp.FAST_RTOL)  # for the iteration count only
    err = np.abs(np.asarray(fast_cols["topk_sv"]) - exact) / exact
    row = {"size": f"{m}x{n}", "spectrum": kind, "svdvals_s": min(t_sv), "fast_s": min(t_fast),
           "ratio": min(t_fast) / min(t_sv), "max_rel_err": float(err.max()),
           "err_est": fast_cols["topk_sv_err_est"], "krylov_dim": res.dim, "method": res.method,
           "svdvals_med": statistics.median(t_sv), "fast_med": statistics.median(t_fast), "full_s": None}
    if full:
        dt, cols = timed(lambda: sp.spectral_columns(w0, w1, DiffOptions(spectral="full", topk=K)))
        row["full_s"] = dt
        fe = np.abs(np.asarray(cols["topk_sv"]) - exact) / exact
        row["full_rel_err"] = float(fe.max())
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default=",".join(f"{m}x{n}" for m, n in SIZES))
    ap.add_argument("--spectra", default="gauss,power")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-full", action="store_true", help="skip the (slow) full mode")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, k = {K}, "
          f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    # warm up the LAPACK/BLAS paths once
    sp.spectral_columns(torch.randn(256, 256), torch.randn(256, 256), DiffOptions(spectral="full"))
    hdr = (f"{'size':>10} {'spectrum':>8} {'svdvals_s':>9} {'full_s':>8} {'fast_s':>8} {'fast/svd':>8} "
           f"{'max_rel_err':>11} {'err_est':>8} {'method:dim':>10}  (medians: svdvals, fast)")
    print(hdr)
    for size in a.sizes.split(","):
        m, n = (int(x) for x in size.split("x"))
        for kind in a.spectra.split(","):
            r = run_case(m, n, kind, a.repeat, not a.no_full)
            full = f"{r['full_s']:8.2f}" if r["full_s"] is not None else f"{'-':>8}"
            dim = r["method"] + (f":{r['krylov_dim']}" if r["method"] == "krylov" else "")
            print(f"{r['size']:>10} {r['spectrum']:>8} {r['svdvals_s']:9.3f} {full} {r['fast_s']:8.3f} "
                  f"{r['ratio']:8.3f} {r['max_rel_err']:11.2e} {r['err_est']:8.1e} {dim:>10}  "
                  f"({r['svdvals_med']:.3f}, {r['fast_med']:.3f})", flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
