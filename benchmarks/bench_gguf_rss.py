"""Peak RSS of `updelta diff` on GGUF files: flat in model size (docs/formats.md, GGUF).

    python benchmarks/bench_gguf_rss.py --gb 1.0            # a generated ~1 GB Q8_0 file against itself
    python benchmarks/bench_gguf_rss.py --smollm2           # the real SmolLM2 Q4_1 GGUF against its bf16 folder

The generated file is written with gguf-py's streaming writer (tensor infos first, then one tensor's raw Q8_0
blocks at a time: random codes, finite f16 scales), so writing it needs memory for one tensor only. Each diff
runs in a child process (`updelta diff ... --spectral off`) whose peak RSS (ru_maxrss of the child) is printed
beside the file size.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_big(path: Path, gb: float, rows: int = 4096, cols: int = 8192) -> Path:
    import gguf
    from gguf import GGMLQuantizationType as Q

    per = rows * cols // 32 * 34
    n = max(1, round(gb * 1e9 / per))
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(n)
    w.add_head_count(32)
    w.add_head_count_kv(32)
    names = [f"blk.{i}.ffn_up.weight" for i in range(n)]
    for name in names:
        w.add_tensor_info(name, (rows, cols // 32 * 34), np.dtype(np.uint8), per, raw_dtype=Q.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(0)
    scale = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    for _ in names:
        b = rng.integers(0, 256, size=(rows * cols // 32, 34), dtype=np.uint8)
        b[:, 0:2] = scale
        w.write_tensor_data(b.reshape(rows, cols // 32 * 34))
    w.close()
    return path


def diff_rss(a, b) -> tuple[float, float]:
    """(peak RSS MB, seconds) of `updelta diff a b --spectral off` in a child process."""
    out = Path(tempfile.mkdtemp(prefix="updelta-gguf-rss-")) / "out"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "updelta.cli", "diff", str(a), str(b), "--spectral", "off", "--out",
                    str(out)], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "UPDELTA_PROGRESS": "0"})
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=0.0, help="generate a GGUF of about this many GB")
    ap.add_argument("--smollm2", action="store_true", help="the real SmolLM2 Q4_1 GGUF against its bf16 folder")
    args = ap.parse_args()
    if args.smollm2:
        from updelta.models.smollm2 import gguf_path, smollm2_path
        g = gguf_path()
        rss, secs = diff_rss(smollm2_path(), g)
        print(f"SmolLM2 Q4_1 GGUF ({g.stat().st_size / 1e6:.0f} MB) vs bf16 folder: peak RSS {rss:.0f} MB, "
              f"{secs:.0f} s")
    if args.gb:
        with tempfile.TemporaryDirectory(prefix="updelta-gguf-big-") as d:
            big = write_big(Path(d) / "big.gguf", args.gb)
            rss, secs = diff_rss(big, big)
            print(f"generated Q8_0 GGUF ({big.stat().st_size / 1e9:.2f} GB) vs itself: peak RSS {rss:.0f} MB, "
                  f"{secs:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
