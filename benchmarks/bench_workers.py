"""Benchmark of the executor: `updelta diff --spectral full` (and `fast`) with 1 worker against 2 workers.

Creates, if absent, a ~91M-parameter bf16 pair (Llama-like shapes: hidden 768, MLP 2048, 12 layers,
vocab 8000; fine-tune = base + noise on 30% of elements) and times whole processes, alternating
the worker counts `--repeat` times and keeping the best. With `--workers 1` a spectral job gets
every torch thread; with `--workers 2` two tensors are in flight, one BLAS thread each (plan.py).

    python benchmarks/bench_workers.py [--repeat 2] [--modes full,fast]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import DATA, PY, folder_bytes, llama_shapes, measure  # noqa: E402

UPDELTA = str(Path(sys.executable).parent / "updelta")


def shapes_100m() -> dict[str, tuple[int, ...]]:
    """~91M parameters: hidden 768, MLP 2048, 12 layers, vocab 8000, tied head."""
    return llama_shapes(hidden=768, inter=2048, layers=12, vocab=8000, head=False)


def ensure_100m(folder: Path) -> tuple[Path, Path]:
    """`write_pair` in a child process (this measuring process never imports torch)."""
    code = ("import sys; sys.path.insert(0, %r); from _common import *; from bench_workers import shapes_100m; "
            "write_pair(Path(%r), shapes_100m(), shards=2)") % (str(Path(__file__).parent), str(folder))
    subprocess.run([PY, "-c", code], check=True, cwd=Path(__file__).parent)
    return folder / "base", folder / "ft"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--modes", default="full,fast")
    args = ap.parse_args()
    b, f = ensure_100m(DATA / "llama100m")
    n = sum(1 for _ in shapes_100m())
    print(f"~91M-param bf16 pair, {folder_bytes(b, f) / 1e9:.2f} GB, {n} tensors; {os.cpu_count()} cores; "
          f"best of {args.repeat}, alternating", file=sys.stderr)
    rows = {}
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        runs: dict[int, list[dict]] = {1: [], 2: []}
        for _ in range(args.repeat):
            for w in (1, 2):
                runs[w].append(measure([UPDELTA, "diff", str(b), str(f), "--spectral", mode, "--workers", str(w)]))
        for w in (1, 2):
            rows[(mode, w)] = min(runs[w], key=lambda r: r["wall_s"])
    print(f"{'mode':6s} {'workers':>7s} {'wall s':>8s} {'peak RSS MB':>12s} {'speed-up':>9s}")
    for (mode, w), r in rows.items():
        sp = rows[(mode, 1)]["wall_s"] / r["wall_s"]
        print(f"{mode:6s} {w:7d} {r['wall_s']:8.2f} {r['rss_mb']:12.0f} {sp:9.2f}")
    with open("/proc/loadavg") as fh:
        print("load average now:", " ".join(fh.read().split()[:3]))


if __name__ == "__main__":
    main()
