"""Where the time of `updelta diff` goes: start-up imports, the cheap pass, and each spectral step per tensor shape.

    .venv/bin/python benchmarks/profile_spectral.py BASE FT [--modes fast,full] [--threads 2]

Whole processes (wall time and peak RSS from wait4): `python -c "import updelta.cli"` (start-up imports),
`updelta diff --spectral off` (start-up + cheap pass) and `--spectral fast` / `full` (+ spectral pass). Then, in this
process, one tensor of each distinct shape of the pair is materialised and its spectral columns are computed under
cProfile with the engine's thread count (torch threads // workers), and the cumulative seconds of each step
(`svdvals`, the SVD of W0 and W1, the Krylov solver, principal angles, intruders, off-principal) are printed
per shape, with the count of tensors of that shape, so the per-shape figures times the count estimate the
spectral pass. The decomposition cache is off (`UPDELTA_CACHE_DIR` points at an empty temporary folder and
`cache=False` in process), so the figures are the cold case.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import measure  # noqa: E402

STEPS = {  # function name (cProfile) -> label
    "_materialize": "materialise W0/W1 (float32)",
    "_fro2": "||D||_F (float64)",
    "topk_singular_values": "top-k sigma(D) (Krylov/Gram)",
    "svdvals": "svdvals (D, W0 or W1)",
    "__init__": "decomposition of W0/W1 (Decomp)",
    "decompose_base": "decomposition of W0",
    "decompose_ft": "decomposition of W1",
    "topk_vectors": "top-k vectors (block Krylov)",
    "_principal": "principal angles",
    "_intruder_counts": "intruders (incl. U0^T Y)",
    "ut": "U0^T Y",
    "_offprincipal": "off-principal (radix select)",
}


def _has_cache() -> bool:
    from dataclasses import fields

    from updelta.options import DiffOptions
    return any(f.name == "cache" for f in fields(DiffOptions))


def whole_processes(base: str, ft: str, modes: list[str], threads: int, cache_dir: str) -> list[tuple[str, dict]]:
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE",
           "UPDELTA_CACHE_DIR": cache_dir}
    py = sys.executable
    rows = [("import updelta.cli", measure([py, "-c", "import updelta.cli"], env=env)),
            ("diff --help", measure([py, "-m", "updelta.cli", "diff", "--help"], env=env))]
    out = Path(cache_dir) / "out"
    for mode in ["off", *modes]:
        cmd = [py, "-m", "updelta.cli", "diff", base, ft, "--spectral", mode, "--no-progress",
               *(["--no-cache"] if _has_cache() else []), "--out", str(out / f"{mode}.parquet")]
        rows.append((f"diff --spectral {mode}", measure(cmd, env=env)))
    return rows


def per_shape(base: str, ft: str, modes: list[str], threads: int) -> None:
    import torch

    from updelta.scan.engine import machine_env
    from updelta.io import open_checkpoint
    from updelta.scan.jobs.spectral import run_spectral_job
    from updelta.options import DiffOptions
    from updelta.scan.pairing import pair_checkpoints
    from updelta.scan.plan import make_plan, resolve_pairs

    torch.set_num_threads(threads)
    for mode in modes:
        opts = DiffOptions(spectral=mode, progress=False, **({"cache": False} if _has_cache() else {}))
        b, f = open_checkpoint(base), open_checkpoint(ft)
        plan = make_plan(pair_checkpoints(b, {"ft": f}, opts), resolve_pairs(["ft"], None), opts, machine_env(opts))
        counts = Counter(j.tensor.shape for j in plan.spectral)
        seen = {}
        for j in plan.spectral:
            seen.setdefault(j.tensor.shape, j)
        print(f"\n--spectral {mode}: {len(plan.spectral)} matrices, {plan.spectral_threads} BLAS thread(s) per job, "
              f"{plan.workers} worker(s)")
        total = 0.0
        for shape, job in seen.items():
            pr = cProfile.Profile()
            t0 = time.perf_counter()
            pr.enable()
            run_spectral_job(job)
            pr.disable()
            wall = time.perf_counter() - t0
            total += wall * counts[shape]
            st = pstats.Stats(pr)
            cells = []
            for (file, _, fn), (_, _, _, ct, _) in st.stats.items():
                if fn in STEPS and ("updelta" in file):
                    if fn == "__init__" and "spectral" not in file:
                        continue
                    cells.append((ct, STEPS[fn]))
            cells.sort(reverse=True)
            print(f"  {str(shape):>14} x{counts[shape]:<3} {wall:7.3f} s/tensor  "
                  + ", ".join(f"{lab} {ct:.3f}" for ct, lab in cells))
        print(f"  estimated spectral pass with one worker: {total:.1f} s")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base")
    ap.add_argument("ft")
    ap.add_argument("--modes", default="fast,full")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-processes", action="store_true")
    ap.add_argument("--skip-shapes", action="store_true")
    a = ap.parse_args(argv)
    modes = [m for m in a.modes.split(",") if m]
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["UPDELTA_CACHE_DIR"] = tmp
        if not a.skip_processes:
            print(f"whole processes, {a.threads} thread(s), load {os.getloadavg()[0]:.2f}")
            for name, r in whole_processes(a.base, a.ft, modes, a.threads, tmp):
                print(f"  {name:<24} {r['wall_s']:7.2f} s  peak RSS {r['rss_mb']:6.0f} MB")
        if not a.skip_shapes:
            per_shape(a.base, a.ft, modes, a.threads)


if __name__ == "__main__":
    main()
