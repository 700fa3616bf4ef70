"""The decomposition cache: a second `updelta compare --spectral full` on the same base against the first.

W0's exact decomposition (every singular value, U0, the top right vectors) is the same for every run of a compare
and every later command on the same base; `full` mode computes it once per tensor within a command and keeps it
under UPDELTA_CACHE_DIR (docs/metrics.md, "Decompositions and the base cache"). This script times, as whole
processes and in rotation (fastest of `--rounds` kept):
- cold: `compare base r1 r2 --spectral full` with an empty cache folder (computes W0's decompositions, digests the
  base tensors and writes the entries),
- warm: the same command again on the filled folder (reads them),
- off: `--no-cache` (computes them, writes nothing),
and, in process, the W0 share itself: the CPU seconds, summed over the base's 2-D tensors, of `base_decomposition`
(one thread per tensor, as a spectral job has with 2 workers), which the warm run should save. Wall and CPU seconds
are both shown: CPU seconds move less than wall seconds on a shared machine.

    python benchmarks/bench_cache.py [--layers 2] [--vocab 8000] [--rounds 2]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import DATA, PY, llama_shapes, measure  # noqa: E402

UPDELTA = str(Path(sys.executable).parent / "updelta")

W0_SHARE = r"""
import sys, time, torch
from safetensors import safe_open
from updelta.options import DiffOptions
from updelta.metrics.spectral import base_decomposition
torch.set_num_threads(1)
opts, total = DiffOptions(spectral="full"), 0.0
with safe_open(sys.argv[1], "pt") as f:
    for k in f.keys():
        w = f.get_tensor(k)
        if w.ndim == 2:
            w = w.float()
            t0 = time.process_time(); base_decomposition(w, opts); total += time.process_time() - t0
print(total)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    folder = DATA / f"exec-{a.layers}l-{a.vocab}v-2"
    subprocess.run([PY, str(Path(__file__).parent / "bench_executors.py"), "--write-only", "--layers",
                    str(a.layers), "--checkpoints", "2", "--vocab", str(a.vocab)], check=True)
    base = folder / "base"
    runs = [f"r{k}={folder / 'out' / f'checkpoint-{100 * (k + 1)}'}" for k in range(2)]
    shapes = llama_shapes(hidden=768, inter=2048, layers=a.layers, vocab=a.vocab)
    n2d = sum(len(s) == 2 for s in shapes.values())
    tmp = Path(tempfile.mkdtemp(prefix="updelta-bench-cache-"))
    cmd = [UPDELTA, "compare", str(base), *runs, "--spectral", "full", "--out", str(tmp / "out")]
    best: dict[str, dict] = {}

    def keep(what: str, r: dict) -> None:
        if what not in best or r["wall_s"] < best[what]["wall_s"]:
            best[what] = r
    try:
        for _ in range(a.rounds):
            cache = tmp / "cache"
            shutil.rmtree(cache, ignore_errors=True)
            keep("cold (empty cache)", measure(cmd, 1, env={"UPDELTA_CACHE_DIR": str(cache)}))
            keep("warm (second command)", measure(cmd, 1, env={"UPDELTA_CACHE_DIR": str(cache)}))
            keep("off (--no-cache)", measure([*cmd, "--no-cache"], 1, env={"UPDELTA_CACHE_DIR": str(cache)}))
        share = float(subprocess.run([PY, "-c", W0_SHARE, str(base / "model.safetensors")], capture_output=True,
                                     text=True, check=True).stdout.split()[-1])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"compare of 2 runs, --spectral full, {a.layers} layers, vocab {a.vocab} ({n2d} 2-D tensors); "
          f"fastest of {a.rounds} rounds\n")
    print("| what | wall s | CPU s | peak RSS MB |\n|---|---|---|---|")
    for k, r in best.items():
        print(f"| {k} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['rss_mb']:.0f} |")
    cold, warm = best["cold (empty cache)"], best["warm (second command)"]
    print(f"\nW0's decompositions in process (1 thread each, summed): {share:.1f} s of CPU; saved by the warm run: "
          f"{cold['cpu_s'] - warm['cpu_s']:.1f} s CPU ({cold['wall_s'] - warm['wall_s']:.1f} s wall); "
          f"warm / cold = {warm['wall_s'] / cold['wall_s']:.2f} wall, {warm['cpu_s'] / cold['cpu_s']:.2f} CPU")


if __name__ == "__main__":
    main()
