"""Threads vs Ray in one run: an N-checkpoint trajectory (--spectral off) and a `--spectral full` compare of 4 runs
on a 125M-shape bf16 Llama model (hidden 768, MLP 2048, 12 layers, vocab 32000), with threads (2 workers), Ray
with 1 worker and Ray with 2 workers (a new local Ray per scan: start-up included, and measured alone); and the
driver's peak RSS (its own process, RUSAGE_SELF) against the number of checkpoints.

    python benchmarks/bench_executors.py                    # 125M shapes, 8 checkpoints
    python benchmarks/bench_executors.py --layers 2 --checkpoints 4   # short, on a loaded machine

Each measurement is a fresh driver process (python -c), timed inside it (the scan, Ray start-up included) and
as a whole process.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import DATA, PY, llama_shapes  # noqa: E402

DRIVER = r"""
import json, resource, sys, time
import updelta
from updelta.trajectory import trajectory
kind, base, args, opts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
t0 = time.perf_counter()
if kind == "trajectory":
    r = trajectory(base, args, **opts).table
    n = len(r)
elif kind == "compare":
    r = updelta.compare(base, args, **opts).tensors
    n = int(r["stable_rank"].notna().sum())
else:  # ray start-up alone
    import ray
    ray.init(address="local", include_dashboard=False, configure_logging=False)
    ray.get(ray.remote(lambda: 1).remote())
    ray.shutdown()
    n = 0
print(json.dumps({"s": time.perf_counter() - t0, "rows": n,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_checkpoints(folder: Path, shapes: dict, n: int, seed: int = 0) -> tuple[Path, list[Path]]:
    """A bf16 base and n checkpoints (a random walk: each adds noise on 30% of elements); kept if present."""
    import torch
    from safetensors.torch import save_file

    base, outs = folder / "base", [folder / "out" / f"checkpoint-{100 * (k + 1)}" for k in range(n)]
    if all((p / "model.safetensors").exists() for p in (base, *outs)):
        return base, outs
    g = torch.Generator().manual_seed(seed)
    cur = {k: (torch.randn(s, generator=g) * 0.02).to(torch.bfloat16) for k, s in shapes.items()}
    for p in (base, *outs):
        p.mkdir(parents=True, exist_ok=True)
        save_file(cur, str(p / "model.safetensors"))
        (p / "config.json").write_text(json.dumps({"model_type": "llama"}))
        cur = {k: (v.float() + torch.randn(v.shape, generator=g) * 1e-3
                   * (torch.rand(v.shape, generator=g) < 0.3)).to(torch.bfloat16) for k, v in cur.items()}
    return base, outs


def drive(kind: str, base: Path, args, opts: dict) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run([PY, "-c", DRIVER, kind, str(base), json.dumps(args, default=str), json.dumps(opts)],
                       capture_output=True, text=True, env={"UPDELTA_PROGRESS": "0", "OMP_WAIT_POLICY": "PASSIVE",
                                                            "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-3000:])
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["process_s"] = time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--checkpoints", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--skip-compare", action="store_true")
    a = ap.parse_args()
    shapes = llama_shapes(hidden=768, inter=2048, layers=a.layers, vocab=a.vocab)
    numel = sum(__import__("math").prod(s) for s in shapes.values())
    base, outs = write_checkpoints(DATA / f"exec-{a.layers}l-{a.vocab}v-{a.checkpoints}", shapes, a.checkpoints)
    print(f"model: {numel / 1e6:.0f}M parameters bf16 ({2 * numel / 1e9:.2f} GB per checkpoint), "
          f"{a.checkpoints} checkpoints", flush=True)
    ray_alone = drive("ray", base, [], {})
    print(f"new local Ray, start + one task + shutdown: {ray_alone['s']:.1f} s", flush=True)
    configs = [("threads, 2 workers", dict(executor="threads", workers=2)),
               ("ray, 1 worker", dict(executor="ray", workers=1, ray_address="local")),
               ("ray, 2 workers", dict(executor="ray", workers=2, ray_address="local"))]
    traj = [str(p) for p in outs]
    print("\n| what | executor | scan s | process s | driver peak RSS MB |\n|---|---|---|---|---|", flush=True)

    def row(what, name, r):
        print(f"| {what} | {name} | {r['s']:.1f} | {r['process_s']:.1f} | {r['rss_mb']:.0f} |", flush=True)
    for name, o in configs:
        row(f"trajectory, {a.checkpoints} checkpoints, --spectral off", name,
            drive("trajectory", base, traj, {**o, "spectral": "off"}))
    if not a.skip_compare:
        runs = {f"r{k}": str(p) for k, p in enumerate(outs[:4])}
        for name, o in configs:
            row("compare, 4 runs, --spectral full", name, drive("compare", base, runs, {**o, "spectral": "full"}))
    print("\ndriver peak RSS vs checkpoints (trajectory, --spectral off):\n| checkpoints | threads MB | ray (2) MB |"
          "\n|---|---|---|", flush=True)
    for n in sorted({1, max(1, a.checkpoints // 2), a.checkpoints}):
        t = drive("trajectory", base, traj[:n], dict(executor="threads", workers=2, spectral="off"))
        r = drive("trajectory", base, traj[:n], dict(executor="ray", workers=2, ray_address="local",
                                                     spectral="off"))
        print(f"| {n} | {t['rss_mb']:.0f} | {r['rss_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
