"""Per-element cost of the C kernel's functions on in-memory blocks, beside numpy baselines in the same run.

    python benchmarks/bench_kernel.py [--old path/to/old/_fused.so] [--n 262144] [--repeat 200]

Times `stats` (with and without the exponent histogram), `stats_rowcol`, `stats_heads` and `pair` on one
block of `--n` elements (the scan's default block: 262144) of bf16 and float32 weights, in ns per element
(minimum over rounds of `--repeat` calls; the minimum is the figure least moved by other load on a shared
machine). Baselines measured in the same run: `a.copy()` of the bf16 block (a memcpy of its bytes) and
`np.add.reduce` of the float32 block (one read, vectorised). With `--old`, a second build of the extension
(e.g. the one before a change) is loaded by path and timed alternating with the current one, so the ratio
old/new comes from one run. The current build is timed on each SIMD path its CPU has (`_fused.simd`:
portable, avx2, avx512).
"""
from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import time

import numpy as np


def load(path: str):
    """The extension module at `path` (its init function is `PyInit__fused`), not registered in sys.modules."""
    loader = importlib.machinery.ExtensionFileLoader("_fused", path)
    spec = importlib.util.spec_from_file_location("_fused", path, loader=loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def blocks(n: int, seed: int = 0):
    """A bf16 base/fine-tuned pair (30% of elements changed), its float32 widening, and a second run."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal(n).astype(np.float32) * 0.02)
    d = rng.standard_normal(n).astype(np.float32) * 1e-3 * (rng.random(n) < 0.3)
    d2 = rng.standard_normal(n).astype(np.float32) * 1e-3 * (rng.random(n) < 0.3)

    def bf(x):
        return (x.view(np.uint32) >> 16).astype(np.uint16)

    a16, b16, c16 = bf(w), bf(w + d), bf(w + d2)

    def widen(x):
        return (x.astype(np.uint32) << 16).view(np.float32)

    return a16, b16, c16, widen(a16), widen(b16), widen(c16)


def per_elem(fn, n: int, repeat: int, rounds: int = 5) -> float:
    """ns per element of `fn()` on an n-element block: minimum over `rounds` rounds of `repeat` calls."""
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(repeat):
            fn()
        best = min(best, (time.perf_counter() - t) / repeat)
    return best / n * 1e9


def cases(mod, n: int):
    a16, b16, c16, a32, b32, c32 = blocks(n)
    cols = 896
    nrows = (n - 1) // cols + 1
    rows = np.zeros(nrows + 1)
    col = np.zeros(cols)
    rs, cs = np.zeros((6, nrows)), np.zeros((6, cols))
    hist = np.zeros(257, np.int64)
    w32 = np.empty(n, np.float32)
    return {
        "stats bf16": lambda: mod.stats(a16, 1, b16, 1, 1e-6, 1e-3, None),
        "stats bf16 +hist": lambda: mod.stats(a16, 1, b16, 1, 1e-6, 1e-3, hist),
        "stats f32": lambda: mod.stats(a32, 0, b32, 0, 1e-6, 1e-3, None),
        "stats_rowcol bf16": lambda: mod.stats_rowcol(a16, 1, b16, 1, 1e-6, 1e-3, None, 0, cols, rows, col),
        "stats_heads bf16 ax0": lambda: mod.stats_heads(a16, 1, b16, 1, 1e-6, 1e-3, None, 0, cols, 0, rs, cs),
        "stats_heads bf16 ax1": lambda: mod.stats_heads(a16, 1, b16, 1, 1e-6, 1e-3, None, 0, cols, 1, rs, cs),
        "pair f32": lambda: mod.pair(a32, b32, c32, 1e-6, 1e-3),
        "widen_bf16": lambda: mod.widen_bf16(a16, w32),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", help="path of another build of updelta/_fused*.so to time alternating")
    ap.add_argument("--n", type=int, default=262144)
    ap.add_argument("--repeat", type=int, default=100)
    args = ap.parse_args()
    from updelta import _fused as new  # the build under test (the worktree's)
    cols = []  # (label, module, SIMD path to select first or None)
    paths = [p for p in ("portable", "avx2", "avx512") if _has(new, p)] if hasattr(new, "simd") else [None]
    cols += [(f"new {p}" if p else "new", new, p) for p in paths]
    if args.old:
        old = load(args.old)
        cols.append(("old", old, None))
    n = args.n
    a16, _, _, a32, _, _ = blocks(n)
    base = {
        "copy bf16 (memcpy)": per_elem(lambda: a16.copy(), n, args.repeat),
        "np.add.reduce f32": per_elem(lambda: np.add.reduce(a32), n, args.repeat),
    }
    for k, v in base.items():
        print(f"{k:24s} {v:7.3f} ns/elem")
    table = {label: cases(m, n) for label, m, _ in cols}
    res = {label: {} for label, _, _ in cols}
    for case in table[cols[0][0]]:
        for label, m, p in cols:  # alternating the builds and paths per case
            if p:
                m.simd(p)
            res[label][case] = per_elem(table[label][case], n, args.repeat)
    if hasattr(new, "simd"):
        new.simd("auto")
    best = cols[len(paths) - 1][0]
    print(f"{'case':24s}" + "".join(f"{label:>14s}" for label, _, _ in cols)
          + (f"  old/{best.split()[-1]}" if args.old else "") + "   (ns per element)")
    for case in table[cols[0][0]]:
        row = f"{case:24s}" + "".join(f"{res[label][case]:14.3f}" for label, _, _ in cols)
        if args.old:
            row += f"{res['old'][case] / res[best][case]:12.2f}"
        print(row)


def _has(mod, path: str) -> bool:
    """Whether the build `mod` can run the SIMD path `path` on this CPU."""
    try:
        mod.simd(path)
        return True
    except ValueError:
        return False

if __name__ == "__main__":
    main()
