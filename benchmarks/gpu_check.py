"""CPU vs CUDA: correctness on planted cases, diff throughput on a 0.5B pair, `--spectral full` on a 125M pair.

Run by `benchmarks/gpu_check.sh` on a GPU machine (nothing fetched: the pairs are generated here, under a temporary
folder outside the working tree). Without CUDA, or with --cpu-dry-run, every part runs on the CPU only, on smaller
pairs unless --full-size, and the script says so and exits 0.

Tolerances checked (docs of the CUDA path, benchmarks/README.md): counts, sparsity and histograms exact; cheap
norms, means and maxima within 1e-6 relative, cosines within 1e-6 absolute and dot products within 1e-6 of
||D|| ||W0|| (sums that cancel: relative to the size of their terms); spectral columns (float32 SVDs, LAPACK vs cuSOLVER) within
1e-4 relative, and `fast` top-k singular values within 1e-3 (its stopping rule targets 2.5e-4).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import llama_shapes, qwen2_05b_shapes, write_pair  # noqa: E402

CHEAP_RTOL, SPECTRAL_RTOL, FAST_RTOL = 1e-6, 1e-4, 1e-3


def planted(folder: Path, dtype: str) -> tuple[Path, Path]:
    """A small Llama-shaped pair with planted updates: one tensor unchanged, one changed on exactly 1/4 of its
    elements by a fixed amount, the rest Gaussian noise on 30% of elements."""
    import torch
    from safetensors.torch import save_file

    dt = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    shapes = llama_shapes(hidden=256, inter=704, layers=2, vocab=1000)
    g = torch.Generator().manual_seed(1)
    b, f = {}, {}
    for i, (n, s) in enumerate(shapes.items()):
        w = (torch.randn(s, generator=g) * 0.02).to(dt)
        if i == 1:
            d = torch.zeros(s)
        elif i == 2:
            d = torch.zeros(s).reshape(-1)
            d[::4] = 2.0 ** -6
            d = d.reshape(s)
        else:
            d = torch.randn(s, generator=g) * 1e-3 * (torch.rand(s, generator=g) < 0.3)
        b[n], f[n] = w, (w.float() + d).to(dt)
    for d, sd in ((folder / "base", b), (folder / "ft", f)):
        d.mkdir(parents=True, exist_ok=True)
        save_file(sd, str(d / "model.safetensors"))
    return folder / "base", folder / "ft"


def _rel(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        return math.inf
    ok = np.isfinite(a) & np.isfinite(b)
    if not np.array_equal(np.isfinite(a), np.isfinite(b)):
        return math.inf
    den = np.maximum(np.abs(a[ok]), 1e-30)
    return float((np.abs(a[ok] - b[ok]) / den).max()) if ok.any() else 0.0


def compare_tables(cpu, gpu, cheap_cols: set[str], spectral_mode: str) -> list[tuple[str, str, float, bool]]:
    """(column, kind, max relative difference, within tolerance) for every numeric column of the tensors table."""
    import numpy as np
    import pandas as pd

    out = []
    skip = {"spectral_s", "run", "name", "layer", "expert", "component", "module", "param", "tower", "shape",
            "dtype_base", "dtype_ft"}
    for c in cpu.columns:
        if c in skip:
            continue
        a, b = cpu[c], gpu[c]
        exact = (c.startswith(("n_", "sparsity", "nonfinite", "intruders")) or c in ("hist", "numel", "resized",
                 "tied", "added_rows") or pd.api.types.is_integer_dtype(a) or pd.api.types.is_bool_dtype(a))
        if a.map(lambda v: isinstance(v, (list, np.ndarray))).any():
            vals = [(np.asarray(x, dtype=float), np.asarray(y, dtype=float)) for x, y in zip(a, b)
                    if isinstance(x, (list, np.ndarray))]
            rel = max((_rel(x, y) for x, y in vals), default=0.0)
        else:
            if not (pd.api.types.is_numeric_dtype(a) or pd.api.types.is_bool_dtype(a)):
                continue
            x, y = a.astype(float).to_numpy(), b.astype(float).to_numpy()
            if c.startswith("cos"):  # bounded by 1: the error relative to that scale (cancellation near 0)
                x, y = x + 1.0, y + 1.0
            elif c.startswith("dot_") and {"delta_fro", "base_fro"} <= set(cpu.columns):
                scale = (cpu["delta_fro"] * cpu["base_fro"]).to_numpy()  # Cauchy-Schwarz bound of the sum
                x, y = x + scale, y + scale
            rel = _rel(x, y)
        if exact:
            kind, tol = "exact", 0.0
        elif c in cheap_cols:
            kind, tol = "cheap", CHEAP_RTOL
        else:
            kind, tol = "spectral", FAST_RTOL if (spectral_mode == "fast" and c == "topk_sv") else SPECTRAL_RTOL
        out.append((c, kind, rel, rel <= tol))
    return out


@contextlib.contextmanager
def cuda_path_on_cpu():
    """The CUDA path's code on the CPU: the torch block function (no C kernel) fed by the prefetching reader."""
    from updelta.scan.jobs import kernel
    from updelta.scan.jobs import prefetch

    fused, wanted = kernel.fused, prefetch.wanted
    kernel.fused, prefetch.wanted = None, (lambda job: True)
    try:
        yield
    finally:
        kernel.fused, prefetch.wanted = fused, wanted


def run_on(dev: str, fn, **kw):
    """`fn(device=..., **kw)` on `dev`: cpu, cuda, or cpu-cuda-path (the CUDA path's code on the CPU)."""
    if dev == "cpu-cuda-path":
        with cuda_path_on_cpu():
            return fn(device="cpu", **kw)
    return fn(device=dev, **kw)


def correctness(tmp: Path, devices: list[str]) -> bool:
    import updelta

    ok = True
    for dtype in ("bfloat16", "float32"):
        b, f = planted(tmp / f"planted-{dtype}", dtype)
        cheap_cols = set(updelta.diff(b, f, spectral="off", device="cpu", progress=False).tensors.columns)
        for mode in ("fast", "full"):
            opts = dict(spectral=mode, histogram=True, progress=False)
            cpu = updelta.diff(b, f, device="cpu", **opts).tensors
            sp = cpu.set_index("name")["sparsity_exact"]
            names = list(llama_shapes(hidden=256, inter=704, layers=2, vocab=1000))
            assert sp[names[1]] == 1.0 and abs(sp[names[2]] - 0.75) < 1e-12, "planted sparsities"
            gpu = run_on(devices[1], lambda **k: updelta.diff(b, f, **k), **opts).tensors
            rows = compare_tables(cpu, gpu, cheap_cols, mode)
            bad = [r for r in rows if not r[3]]
            ok &= not bad
            worst = {k: max((r[2] for r in rows if r[1] == k), default=0.0) for k in ("exact", "cheap", "spectral")}
            print(f"  planted {dtype} {mode} cpu vs {devices[1]}: max rel diff exact {worst['exact']:.1e}, cheap {worst['cheap']:.1e}, "
                  f"spectral {worst['spectral']:.1e} -> {'ok' if not bad else 'FAIL ' + str(bad[:5])}")
    return ok


def plain_read_s(*folders: Path) -> tuple[float, int]:
    """Seconds to read every weights file once (16 MiB chunks, page cache warm after the first pass)."""
    files = [p for d in folders for p in sorted(d.glob("*.safetensors"))]
    buf = bytearray(16 << 20)
    best = math.inf
    for _ in range(2):
        t0 = time.perf_counter()
        for p in files:
            with open(p, "rb", buffering=0) as fh:
                while fh.readinto(buf):
                    pass
        best = min(best, time.perf_counter() - t0)
    return best, sum(p.stat().st_size for p in files)


def timed(fn, repeat: int = 1):
    best, out = math.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-dry-run", action="store_true", help="CPU only, small pairs (what CI machines can run)")
    ap.add_argument("--full-size", action="store_true", help="the 0.5B and 125M pairs even without CUDA")
    ap.add_argument("--keep", type=Path, default=None, help="generate the pairs here and keep them")
    a = ap.parse_args()
    import torch

    import updelta

    cuda = torch.cuda.is_available() and not a.cpu_dry_run
    if not cuda:
        print("gpu_check: " + ("--cpu-dry-run" if a.cpu_dry_run else "no CUDA device visible")
              + ": CPU parts only" + ("" if a.full_size else ", on small pairs"))
    else:
        print(f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} CPU threads")
    big = cuda or a.full_size
    devices = ["cpu", "cuda" if cuda else "cpu-cuda-path"]
    tmp = a.keep or Path(tempfile.mkdtemp(prefix="updelta-gpu-check-"))
    t_start = time.perf_counter()
    rows: list[tuple[str, str, float, str]] = []
    try:
        print("1. CPU vs CUDA on planted cases")
        ok = correctness(tmp, devices)

        print("2. diff throughput (--spectral off) vs a plain read")
        shapes = qwen2_05b_shapes(24 if big else 2)
        if not big:
            shapes = {k: tuple(min(x, 4096) for x in v) for k, v in shapes.items()}
        t0 = time.perf_counter()
        b, f = write_pair(tmp / ("q05b" if big else "q-small"), shapes, shards=5)
        print(f"   generated the pair in {time.perf_counter() - t0:.1f} s")
        read_s, nbytes = plain_read_s(b, f)
        rows.append(("plain read", "-", read_s, f"{nbytes / read_s / 1e9:.2f} GB/s"))
        ref = None
        for dev in devices:
            s, res = timed(lambda: run_on(dev, lambda **k: updelta.diff(b, f, **k), spectral="off", progress=False),
                           repeat=2)
            rows.append((f"diff --spectral off ({nbytes / 1e9:.2f} GB)", dev, s,
                         f"{nbytes / s / 1e9:.2f} GB/s, {read_s / s:.2f}x plain read"))
            if ref is None:
                ref = res.tensors
            else:
                cheap = set(ref.columns)
                bad = [r for r in compare_tables(ref, res.tensors, cheap, "off") if not r[3]]
                ok &= not bad
                print(f"   0.5B pair cpu vs {dev}: {'ok' if not bad else 'FAIL ' + str(bad[:5])}")

        print("3. --spectral full on the 125M pair")
        shapes = llama_shapes(hidden=768, inter=2048, layers=12, vocab=32000) if big else \
            llama_shapes(hidden=256, inter=704, layers=2, vocab=4000)
        b, f = write_pair(tmp / ("m125" if big else "m-small"), shapes, shards=2)
        cheap = set(updelta.diff(b, f, spectral="off", device="cpu", progress=False).tensors.columns)
        ref = None
        for dev in devices:
            s, res = timed(lambda: run_on(dev, lambda **k: updelta.diff(b, f, **k), spectral="full", progress=False))
            rows.append((f"diff --spectral full ({sum(math.prod(v) for v in shapes.values()) / 1e6:.0f}M)", dev, s,
                         f"{res.tensors['stable_rank'].notna().sum()} matrices"))
            if ref is None:
                ref = res.tensors
            else:
                out = compare_tables(ref, res.tensors, cheap, "full")
                bad = [r for r in out if not r[3]]
                ok &= not bad
                worst = max((r[2] for r in out if r[1] == "spectral"), default=0.0)
                print(f"   125M full cpu vs {dev}: spectral max rel diff {worst:.1e} "
                      f"-> {'ok' if not bad else 'FAIL ' + str(bad[:5])}")
                rows[-1] = (*rows[-1][:3], rows[-1][3] + f", {rows[-2][2] / s:.1f}x cpu")
    finally:
        if a.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n| what | device | seconds | note |\n|---|---|---|---|")
    for w, d, s, n in rows:
        print(f"| {w} | {d} | {s:.2f} | {n} |")
    print(f"\ngpu_check: {'all checks passed' if ok else 'SOME CHECKS FAILED'} "
          f"({time.perf_counter() - t_start:.0f} s{'' if cuda else ', CPU only'})")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.exit(main())
