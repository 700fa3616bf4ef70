"""Benchmark of `updelta diff` (no spectral work) against a plain read and the naive way.

Creates, if absent, bf16 pairs with Qwen2-0.5B shapes (5 shards; fine-tune = base + noise on 30% of
elements) with 24 layers and with 48 layers, and a tiny pair. Measures whole processes in one run:
- a plain sequential read of both checkpoints' files (cat to /dev/null, page cache warm),
- `updelta diff --spectral off` with and without `--no-where` (the row/column energies and head sums,
  alternated, ratio printed), and the naive way (load both state dicts, loop per tensor in torch),
- `python -c "import torch"` and `updelta diff` of a tiny pair (start-up cost),
- the cheap pass itself with and without the where figures, in one warm process (`updelta.diff`, alternated,
  best of `--repeat`; wall and CPU seconds of the pass, no start-up, serial and with 2 threads): the ratio the
  where figures cost, free of the start-up's noise,
- `updelta diff --spectral fast` with the logit lens (`--lens-k 4`, the default) and without (`--lens-k 0`),
  alternated: the lens's top-k vector solve of each output-side update and its push through the unembedding;
and prints wall time, throughput as a ratio to the plain read with start-up taken off, and peak RSS.

    python benchmarks/bench_diff.py [--skip-naive] [--skip-48] [--baseline DIR]

`--baseline DIR` also measures the `updelta diff` of another source tree of updelta (e.g. an older
commit unpacked with `git archive`; its CLI runs with PYTHONPATH=DIR from outside this checkout), in
alternation with this one, so old and new are compared under the same machine load.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import DATA, PY, ensure_pair, folder_bytes, measure  # noqa: E402

UPDELTA = str(Path(sys.executable).parent / "updelta")

IN_PROCESS = """
import json, sys, time
import updelta
b, f, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3])
updelta.diff(b, f, spectral="off", where=False)  # warm: imports, page cache, the kernel's first calls
out = {}
for executor in ("serial", "threads"):
    best = {}
    for _ in range(repeat):
        for where in (False, True):
            t0, c0 = time.perf_counter(), time.process_time()
            updelta.diff(b, f, spectral="off", where=where, executor=executor)
            w, c = time.perf_counter() - t0, time.process_time() - c0
            k = "on" if where else "off"
            best[k] = min(best.get(k, (w, c)), (w, c))
    out[executor] = best
print(json.dumps(out))
"""


def cheap_pass_where(b, f, repeat: int) -> dict:
    """{executor: {"on"|"off": (wall s, CPU s)}} of the cheap pass in one warm process (see the docstring)."""
    env = {**os.environ, "UPDELTA_PROGRESS": "0"}
    res = subprocess.run([PY, "-c", IN_PROCESS, str(b), str(f), str(repeat)], capture_output=True, text=True,
                         env=env, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--skip-48", action="store_true")
    ap.add_argument("--skip-lens", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--baseline", type=Path, default=None, help="another updelta source tree to measure too")
    args = ap.parse_args()

    print("preparing checkpoints under", DATA, file=sys.stderr)
    b24, f24 = ensure_pair(DATA / "qwen05b", 24)
    bt, ft = ensure_pair(DATA / "tiny", 2, tiny=True)
    nbytes = folder_bytes(b24, f24)
    files = [str(p) for d in (b24, f24) for p in sorted(d.glob("*.safetensors"))]

    measure(["cat", *files], 1)  # warm the page cache
    rows = {}
    rows["plain read (cat)"] = measure(["sh", "-c", f"cat {' '.join(files)} > /dev/null"], args.repeat)
    rows["python -c 'import torch'"] = measure([PY, "-c", "import torch"], args.repeat)
    rows["updelta diff, tiny pair"] = measure([UPDELTA, "diff", str(bt), str(ft), "--spectral", "off"], args.repeat)
    diff24 = [UPDELTA, "diff", str(b24), str(f24), "--spectral", "off"]
    if args.baseline is None:  # with and without the where figures (row/column energies, heads), alternated
        on, off = [], []
        for _ in range(args.repeat):
            on.append(measure(diff24, 1))
            off.append(measure([*diff24, "--no-where"], 1))
        rows["updelta diff, 0.5B (24 layers)"] = min(on, key=lambda r: r["wall_s"])
        rows["0.5B, --no-where"] = min(off, key=lambda r: r["wall_s"])
        inproc = cheap_pass_where(b24, f24, args.repeat)
    else:  # alternate, best of `repeat` each
        env = {"PYTHONPATH": str(args.baseline.resolve())}
        new, old = [], []
        for _ in range(args.repeat):
            new.append(measure(diff24, 1))
            old.append(measure(diff24, 1, env=env, cwd=args.baseline.parent))
        rows["updelta diff, 0.5B (24 layers)"] = min(new, key=lambda r: r["wall_s"])
        rows["0.5B, baseline tree"] = min(old, key=lambda r: r["wall_s"])
    rows["updelta diff, 1 worker"] = measure([*diff24, "--workers", "1"], args.repeat)
    if not args.skip_naive:
        rows["naive (load both, torch loop)"] = measure([PY, str(Path(__file__).parent / "naive_diff.py"),
                                                         str(b24), str(f24)], 1)
    if not args.skip_48:
        b48, f48 = ensure_pair(DATA / "qwen05b_48", 48)
        measure(["sh", "-c", f"cat {b48}/*.safetensors {f48}/*.safetensors > /dev/null"], 1)
        rows["updelta diff, 48 layers"] = measure([UPDELTA, "diff", str(b48), str(f48), "--spectral", "off"],
                                                  args.repeat)

    lens = {}
    if not args.skip_lens:  # the logit lens costs only with spectral work: fast with and without it, alternated
        fast = [UPDELTA, "diff", str(b24), str(f24), "--spectral", "fast"]
        on, off = [], []
        for _ in range(min(args.repeat, 2)):
            on.append(measure([*fast, "--lens-k", "4"], 1))
            off.append(measure([*fast, "--lens-k", "0"], 1))
        lens = {"on": min(on, key=lambda r: r["wall_s"]), "off": min(off, key=lambda r: r["wall_s"])}

    t_read = rows["plain read (cat)"]["wall_s"]
    t_start = rows["updelta diff, tiny pair"]["wall_s"]
    read_gbs = nbytes / t_read / 1e9
    print(f"\n0.5B bf16 pair: {nbytes / 1e9:.2f} GB in {len(files)} files; {os.cpu_count()} cores; "
          f"best of {args.repeat}")
    print(f"{'what':34s} {'wall s':>8s} {'GB/s*':>8s} {'x read':>7s} {'peak RSS MB':>12s}")
    for k, r in rows.items():
        gbs = ratio = ""
        if "0.5B" in k or "1 worker" in k or "naive" in k or k.startswith("plain"):  # rows over the 0.5B pair
            net = r["wall_s"] - (0 if k.startswith("plain") else t_start)
            g = nbytes / max(net, 1e-9) / 1e9
            gbs, ratio = f"{g:.2f}", f"{g / read_gbs:.2f}"
        print(f"{k:34s} {r['wall_s']:8.2f} {gbs:>8s} {ratio:>7s} {r['rss_mb']:12.0f}")
    print("* throughput on the 0.5B pair with start-up (the tiny-pair diff) taken off; x read = ratio to the plain read")
    if "0.5B, --no-where" in rows:
        w, nw = rows["updelta diff, 0.5B (24 layers)"]["wall_s"], rows["0.5B, --no-where"]["wall_s"]
        print(f"where figures (row/column energies, head sums, top neurons): {w:.2f} s vs {nw:.2f} s without, "
              f"ratio {w / nw:.2f} (whole process; {(w - t_start) / max(nw - t_start, 1e-9):.2f} with start-up off)")
    if args.baseline is None:
        for ex, r in inproc.items():
            (w1, c1), (w0, c0) = r["on"], r["off"]
            print(f"cheap pass in process, {ex}: {w1:.2f} s wall / {c1:.2f} s CPU with the where figures vs "
                  f"{w0:.2f} / {c0:.2f} without: ratio {w1 / w0:.2f} wall, {c1 / c0:.2f} CPU")
    if lens:
        w, nw = lens["on"]["wall_s"], lens["off"]["wall_s"]
        print(f"logit lens (--spectral fast, 0.5B pair): {w:.2f} s with --lens-k 4 vs {nw:.2f} s with --lens-k 0, "
              f"ratio {w / nw:.2f}; peak RSS {lens['on']['rss_mb']:.0f} vs {lens['off']['rss_mb']:.0f} MB")
    t_torch = rows["python -c 'import torch'"]["wall_s"]
    print(f"start-up: whole `updelta diff` of the tiny pair {t_start:.2f} s vs bare `import torch` {t_torch:.2f} s "
          f"(+{t_start - t_torch:.2f} s)")


if __name__ == "__main__":
    main()
