"""The cheap pass beyond start-up against a plain read of the same files, in warm processes, old build vs new.

    python benchmarks/bench_cheap_pass.py [--shapes 05b|3b] [--layers N] [--repeat 3] [--baseline DIR]

Creates (if absent) a bf16 pair with Qwen2-0.5B shapes (24 layers) or Qwen2.5-3B shapes (`--layers`, default 6:
the per-tensor shapes of the 3B model, which set the kernel's per-element cost, at a size the page cache holds
beside other work). In one warm process (imports done, one pass run first), best of `--repeat`, alternated:
- a plain read of every file (Python `readinto` of 16 MiB, page cache warm): the baseline,
- `updelta.diff(spectral="off")` with the where figures on and off (`where=False`), 2 threads, on each SIMD path
  of the C kernel (`_fused.simd`: the widest the CPU has, and portable);
with `--baseline DIR` the same in a process running another source tree (e.g. the commit before, with its own
built `updelta/_fused*.so`), alternated with this one, round by round. Prints wall and CPU seconds and
`x read` = read time / pass time (throughput as a ratio to the read's: the issue's goal is >= 0.5 with the where
figures on). Everything is whole-pass time: reading, the kernel, the Python per-block and per-tensor work.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import DATA, PY, ensure_pair  # noqa: E402

IN_PROCESS = r"""
import json, os, sys, time
import updelta
from updelta.scan.jobs import kernel
b, f, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3])
files = [os.path.join(d, x) for d in (b, f) for x in sorted(os.listdir(d)) if x.endswith(".safetensors")]
buf = bytearray(1 << 24)
def read():
    t = time.perf_counter()
    for p in files:
        with open(p, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass
    return time.perf_counter() - t
paths = ["auto", "portable"] if kernel.available() and hasattr(kernel.fused, "simd") else [None]
updelta.diff(b, f, spectral="off", where=False)  # warm: imports, page cache, the kernel's first calls
out = {"read": (min(read() for _ in range(repeat)), 0.0)}
for _ in range(repeat):
    out["read"] = min(out["read"], (read(), 0.0))
    for p in paths:
        name = kernel.fused.simd(p) if p else "kernel"
        for where in (True, False):
            t0, c0 = time.perf_counter(), time.process_time()
            updelta.diff(b, f, spectral="off", where=where, executor="threads", workers=2)
            r = (time.perf_counter() - t0, time.process_time() - c0)
            k = f"{name}, where {'on' if where else 'off'}"
            out[k] = min(out.get(k, r), r)
print(json.dumps(out))
"""


def run(b: Path, f: Path, repeat: int, tree: Path | None) -> dict:
    env = {**os.environ, "UPDELTA_PROGRESS": "0"}
    cwd = None
    if tree is not None:
        env["PYTHONPATH"], cwd = str(tree.resolve()), str(tree.resolve().parent)
    res = subprocess.run([PY, "-c", IN_PROCESS, str(b.resolve()), str(f.resolve()), str(repeat)], env=env, cwd=cwd,
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def pair(shapes: str, layers: int) -> tuple[Path, Path]:
    if shapes == "05b":
        return ensure_pair(DATA / "qwen05b", 24)
    folder = DATA / f"qwen3b_{layers}l"
    code = ("import sys; sys.path.insert(0, %r); from _common import *; write_pair(Path(%r), qwen25_3b_shapes(%d), "
            "shards=4)") % (str(Path(__file__).parent), str(folder), layers)
    subprocess.run([PY, "-c", code], check=True)
    return folder / "base", folder / "ft"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", choices=["05b", "3b"], default="05b")
    ap.add_argument("--layers", type=int, default=6, help="layers of the 3B-shape pair")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="alternations of this tree and --baseline")
    ap.add_argument("--baseline", type=Path, default=None)
    args = ap.parse_args()
    b, f = pair(args.shapes, args.layers)
    nbytes = sum(p.stat().st_size for d in (b, f) for p in d.glob("*.safetensors"))
    trees = {"this tree": None} | ({"baseline": args.baseline} if args.baseline else {})
    best: dict[str, dict] = {}
    for _ in range(args.rounds if args.baseline else 1):
        for name, tree in trees.items():
            r = run(b, f, args.repeat, tree)
            for k, v in r.items():
                key = (name, k)
                best[key] = min(best.get(key, v), v)
    print(f"{args.shapes} bf16 pair: {nbytes / 1e9:.2f} GB; {os.cpu_count()} cores; load average "
          f"{os.getloadavg()[0]:.1f}; best of {args.repeat} x {args.rounds if args.baseline else 1}")
    print(f"{'tree':10s} {'what':26s} {'wall s':>8s} {'CPU s':>8s} {'x read':>7s}")
    for (name, k), (w, c) in best.items():
        read = best[(name, "read")][0]
        print(f"{name:10s} {k:26s} {w:8.3f} {c:8.3f} {read / w:7.2f}")


if __name__ == "__main__":
    main()
