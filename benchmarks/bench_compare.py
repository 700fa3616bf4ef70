"""Benchmark: `updelta compare` over 4 runs against `updelta diff` over 1 (memory is bounded by the
blocks in flight, not by the number or size of models).

Creates, if absent (under benchmarks/_data/compare/, git-ignored), a Llama-shaped bf16 base of ~192M
parameters (hidden 1024, MLP 2816, 10 layers, vocabulary 32000, untied head; 4 safetensors shards) and
4 fine-tunes (noise on 90%, 50%, 20%, 5% of the elements). Measures whole processes (peak RSS of that
process alone, via wait4; wall time best of --repeat) with the page cache warm:
- `updelta diff BASE RUN1 --spectral off`
- `updelta compare BASE r1=.. r2=.. --spectral off` and the same over 4 runs
and `python -c "import updelta.cli"` (the fixed cost), and prints wall time, bytes read, throughput and
peak RSS, and the ratio compare(4) / diff(1).

    python benchmarks/bench_compare.py [--repeat 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import DATA, PY, llama_shapes, measure  # noqa: E402

UPDELTA = str(Path(sys.executable).parent / "updelta")
FOLDER = DATA / "compare"
RUNS = {"r1": 0.9, "r2": 0.5, "r3": 0.2, "r4": 0.05}  # share of elements each fine-tune changes


def make(folder: Path, shards: int = 4) -> None:
    """Write the base and every run shard by shard (a child process: the measuring one never imports torch)."""
    import torch
    from safetensors.torch import save_file

    shapes = llama_shapes()
    names = list(shapes)
    per = -(-len(names) // shards)
    dirs = {"base": folder / "base", **{r: folder / r for r in RUNS}}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    wm = {}
    for i in range(shards):
        part = names[i * per:(i + 1) * per]
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        base = {}
        for j, n in enumerate(part):
            g = torch.Generator().manual_seed(1000 * i + j)
            base[n] = torch.randn(shapes[n], generator=g).mul_(0.02).to(torch.bfloat16)
            wm[n] = fname
        save_file(base, str(dirs["base"] / fname))
        for k, (r, frac) in enumerate(RUNS.items()):
            g = torch.Generator().manual_seed(7919 * (k + 1) + i)
            ft = {}
            for n, w in base.items():
                mask = torch.rand(shapes[n], generator=g) < frac
                ft[n] = (w.float() + torch.randn(shapes[n], generator=g).mul_(1e-3).mul_(mask)).to(torch.bfloat16)
            save_file(ft, str(dirs[r] / fname))
            del ft
        del base
    for d in dirs.values():
        (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
        (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "done").write_text("ok")


def folder_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.glob("*.safetensors"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--make", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make:
        make(args.make)
        return
    if not (FOLDER / "done").exists():
        print("creating checkpoints under", FOLDER, "(once)", file=sys.stderr)
        subprocess.run([PY, __file__, "--make", str(FOLDER)], check=True)
    base = FOLDER / "base"
    runs = [FOLDER / r for r in RUNS]
    files = [str(p) for d in [base, *runs] for p in sorted(d.glob("*.safetensors"))]
    measure(["sh", "-c", f"cat {' '.join(files)} > /dev/null"], 1)  # warm the page cache
    n_params = sum(int(__import__("math").prod(s)) for s in llama_shapes().values())
    cases = {
        "diff, 1 run": ([UPDELTA, "diff", str(base), str(runs[0])], [base, runs[0]]),
        "compare, 2 runs": ([UPDELTA, "compare", str(base)] + [f"{r.name}={r}" for r in runs[:2]], [base, *runs[:2]]),
        "compare, 4 runs": ([UPDELTA, "compare", str(base)] + [f"{r.name}={r}" for r in runs], [base, *runs]),
    }
    rows = {}
    start = measure([PY, "-c", "import updelta.cli"], args.repeat)  # the fixed cost: interpreter, torch, pandas
    for k, (cmd, dirs) in cases.items():
        r = measure(cmd + ["--spectral", "off", "--no-progress"], args.repeat)
        r["bytes"] = sum(folder_bytes(d) for d in dirs)
        rows[k] = r
        print(f"  measured {k}: {r['wall_s']:.2f} s, {r['rss_mb']:.0f} MB", file=sys.stderr)
    print(f"\nbf16 Llama-shaped base of {n_params / 1e6:.0f}M parameters ({folder_bytes(base) / 1e9:.2f} GB); "
          f"{os.cpu_count()} cores; page cache warm; best of {args.repeat}")
    print(f"{'what':18s} {'checkpoints read':>16s} {'GB read':>8s} {'wall s':>7s} {'GB/s':>6s} {'peak RSS MB':>12s}")
    for k, r in rows.items():
        n = len(cases[k][1])
        print(f"{k:18s} {n:16d} {r['bytes'] / 1e9:8.2f} {r['wall_s']:7.2f} {r['bytes'] / r['wall_s'] / 1e9:6.2f} "
              f"{r['rss_mb']:12.0f}")
    print(f"{'import updelta.cli':18s} {0:16d} {0:8.2f} {start['wall_s']:7.2f} {'':>6s} {start['rss_mb']:12.0f}")
    d1, c4 = rows["diff, 1 run"], rows["compare, 4 runs"]
    print(f"compare over 4 runs / diff over 1: peak RSS x{c4['rss_mb'] / d1['rss_mb']:.2f} "
          f"({c4['rss_mb'] - d1['rss_mb']:+.0f} MB) for x{c4['bytes'] / d1['bytes']:.1f} the bytes read; "
          f"wall time x{c4['wall_s'] / d1['wall_s']:.2f}")
    print(f"above the import alone: diff {d1['rss_mb'] - start['rss_mb']:.0f} MB, "
          f"compare over 4 runs {c4['rss_mb'] - start['rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
