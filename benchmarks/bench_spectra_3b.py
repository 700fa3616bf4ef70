"""Spectra at 3B shapes (issue 30): the cheap pass, `--spectral fast` (streamed over the `--max-memory` budget and,
for comparison, forced whole with a huge budget) and `--spectral full`, beside a plain read, in one run.

The pair is generated (bf16, Qwen2.5-3B shapes: hidden 2048, MLP 11008, 16 heads / 2 KV heads, vocab 151936, tied
embedding; base + Gaussian noise on 30% of the elements) under benchmarks/_data; `--layers` (default 2, the real
model has 36) and `--vocab` scale it down so that a run fits a few minutes on a laptop. Kept out of CI.

Each row is one whole `updelta diff` process: wall seconds, CPU seconds (user + system) and peak RSS (wait4),
measured by `_common.measure`. `full` is slow on CPU at these shapes: `--full` adds it.

    python benchmarks/bench_spectra_3b.py --layers 2          # ~5 minutes on 2 cores
    python benchmarks/bench_spectra_3b.py --layers 36 --full  # the real shapes (12.4 GB)
"""
from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from _common import DATA, PY, folder_bytes, measure

UPDELTA = str(Path(PY).parent / "updelta")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--full", action="store_true", help="also time --spectral full (slow on CPU)")
    ap.add_argument("--max-memory", default="auto", help="the budget of the streamed rows")
    args = ap.parse_args()
    folder = DATA / f"qwen25_3b_L{args.layers}_V{args.vocab}"
    code = ("import sys; sys.path.insert(0, %r); from _common import write_pair; from pathlib import Path; "
            "from _common import qwen25_3b_shapes as q; write_pair(Path(%r), q(%d, %d), shards=2)"
            ) % (str(Path(__file__).parent), str(folder), args.layers, args.vocab)
    subprocess.run([PY, "-c", code], check=True, cwd=Path(__file__).parent)  # torch stays out of this process
    base, ft = folder / "base", folder / "ft"
    files = [str(f) for d in (base, ft) for f in sorted(d.glob("*.safetensors"))]
    measure(["cat", *files], 1)  # warm the page cache
    diff = [UPDELTA, "diff", str(base), str(ft), "--no-progress"]
    rows = {
        "plain read (cat)": measure(["sh", "-c", f"cat {' '.join(files)} > /dev/null"], 1),
        "diff --spectral off": measure([*diff, "--spectral", "off"], 1),
        f"diff --spectral fast (--max-memory {args.max_memory})": measure(
            [*diff, "--spectral", "fast", "--max-memory", args.max_memory], 1),
        "diff --spectral fast, whole (--max-memory 1T)": measure([*diff, "--spectral", "fast", "--max-memory", "1T"],
                                                                  1),
    }
    if args.full:
        rows["diff --spectral full --no-cache"] = measure([*diff, "--spectral", "full", "--no-cache"], 1)
    gb = folder_bytes(base, ft) / 1e9
    print(f"pair: Qwen2.5-3B shapes, {args.layers} layers, vocab {args.vocab}, {gb:.2f} GB (both sides)")
    print(f"{'what':52s} {'wall s':>8s} {'CPU s':>8s} {'peak RSS MB':>12s}")
    for k, r in rows.items():
        print(f"{k:52s} {r['wall_s']:8.1f} {r['cpu_s']:8.1f} {r['rss_mb']:12.0f}")


if __name__ == "__main__":
    main()
