"""Peak RSS of the two ways to read a checkpoint's bytes: pread into reused buffers (updelta) vs memory-mapping
(the safetensors library's `safe_open`, row blocks through `get_slice`), on the same 0.5B-shape bf16 pair.

    python benchmarks/bench_read_rss.py [--layers 24]

Both processes compute the same ||W1 - W0||_F per tensor; each is measured alone (wait4 peak RSS), with the
files in the page cache (a warm-up read first). Mapped pages count in a process's RSS while mapped; pages read
with pread stay in the page cache, outside it.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import DATA, PY, ensure_pair, folder_bytes, measure  # noqa: E402

MMAP_READER = r"""
import sys, torch
from pathlib import Path
from safetensors import safe_open
base, ft = Path(sys.argv[1]), Path(sys.argv[2])
total = 0.0
for fb in sorted(base.glob("*.safetensors")):
    with safe_open(str(fb), "pt") as a, safe_open(str(ft / fb.name), "pt") as b:
        for k in a.keys():
            sa, sb = a.get_slice(k), b.get_slice(k)
            rows = sa.get_shape()[0]
            for r in range(0, rows, 1024):
                d = sb[r:r + 1024].float() - sa[r:r + 1024].float()
                total += float((d.double() ** 2).sum())
print(total ** 0.5)
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=24)
    args = ap.parse_args()
    base, ft = ensure_pair(DATA / ("qwen05b" if args.layers == 24 else f"qwen05b_{args.layers}"), args.layers)
    gb = folder_bytes(base, ft) / 1e9
    subprocess.run(["cat", *map(str, sorted(base.glob("*.safetensors")) + sorted(ft.glob("*.safetensors")))],
                   stdout=subprocess.DEVNULL, check=True)
    pread = measure([PY, "-m", "updelta.cli", "diff", str(base), str(ft), "--spectral", "off", "--no-progress"])
    mmap = measure([PY, "-c", MMAP_READER, str(base), str(ft)])
    print(f"pair: {gb:.2f} GB bf16 ({args.layers} layers)")
    print(f"updelta diff (pread, reused buffers): peak RSS {pread['rss_mb']:.0f} MB, {pread['wall_s']:.1f} s")
    print(f"safe_open + get_slice (mmap):         peak RSS {mmap['rss_mb']:.0f} MB, {mmap['wall_s']:.1f} s")
    print(f"ratio mmap / pread: {mmap['rss_mb'] / pread['rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
