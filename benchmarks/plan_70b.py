"""A 70B pair on paper: measure each step on Llama-3-70B's shapes where they fit here (and scaled-down shapes for
the rest), extrapolate by each step's complexity, and schedule the jobs on 1, 8 and 64 Ray workers.

    python benchmarks/plan_70b.py            # measures (a few minutes on 2 cores), prints the tables
    python benchmarks/plan_70b.py --quick    # smaller shapes only (fit from 4096-wide matrices)

Measured, with 1 torch thread (one worker = one core):
- cheap pass: `scan.jobs.cheap.run_job` over a bf16 8192 x 8192 pair (C kernel), elements per second;
- `spectral_columns(fast)` on 8192 x 1024, 8192 x 8192 and 8192 x 28672 (the widest; --quick: 4096-wide);
- `spectral_columns(full)` on 1024 x 8192 and on square 1024 / 2048 (scaled down: a full SVD of 8192^2 takes
  minutes here), Gaussian updates (the hard case for `fast`).
Extrapolation: cheap time ~ elements; fast ~ m n (a fixed number of block-Lanczos matrix products); full ~
m n min(m, n) (SVDs of W0, W1 and D; tall matrices (m >= 4n) pay the QR, also ~ m n^2). Each step's constant is
the median over the shapes measured for it.
Schedule: the plan's jobs (cheap parts of 16M elements; one spectral job per 2-D tensor, largest first) are given
greedily to the first free worker; wall = the last worker's finish, or the storage time if longer. Storage:
every byte of both checkpoints is read once by the cheap pass and once more by the spectral pass, at
min(workers x PER_WORKER_GBPS, AGGREGATE_GBPS).
"""
from __future__ import annotations

import argparse
import heapq
import math
import sys
import tempfile
import time
from pathlib import Path

PER_WORKER_GBPS = 1.0  # one reader process on a parallel file system / NVMe
AGGREGATE_GBPS = 20.0  # the shared file system's total (Lustre/GPFS class); a single NVMe node is ~3-6

# Llama-3-70B: hidden 8192, MLP 28672, 80 layers, 64 heads / 8 KV heads of 128, vocab 128256, untied head
H, I, L, V, KV = 8192, 28672, 80, 128256, 1024


def llama3_70b() -> list[tuple[str, tuple[int, ...]]]:
    out = [("embed_tokens", (V, H)), ("lm_head", (V, H)), ("norm", (H,))]
    for i in range(L):
        out += [(f"{i}.q", (H, H)), (f"{i}.k", (KV, H)), (f"{i}.v", (KV, H)), (f"{i}.o", (H, H)),
                (f"{i}.gate", (I, H)), (f"{i}.up", (I, H)), (f"{i}.down", (H, I)),
                (f"{i}.ln1", (H,)), (f"{i}.ln2", (H,))]
    return out


def _pair(m: int, n: int, seed: int = 0):
    import torch
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn(m, n, generator=g) * 0.02
    return w0, w0 + torch.randn(m, n, generator=g) * 1e-3


def time_spectral(mode: str, m: int, n: int) -> float:
    from updelta.metrics.spectral import spectral_columns
    from updelta.options import DiffOptions

    w0, w1 = _pair(m, n)
    t0 = time.perf_counter()
    spectral_columns(w0, w1, DiffOptions(spectral=mode))
    return time.perf_counter() - t0


def time_cheap(m: int, n: int) -> float:
    """Seconds per element of the cheap pass (run_job over every part of a bf16 m x n pair, one base + one run)."""
    import torch

    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    from safetensors.torch import save_file

    from updelta.io import open_checkpoint
    from updelta.io.readers import reader_scope
    from updelta.scan.jobs.cheap import run_job
    from updelta.options import DiffOptions
    from updelta.scan.pairing import pair_checkpoints
    from updelta.scan.plan import Env, make_plan, resolve_pairs
    from updelta.scan.jobs import kernel

    w0, w1 = _pair(m, n)
    with tempfile.TemporaryDirectory() as d:
        save_file({"w": w0.to(torch.bfloat16)}, f"{d}/b.safetensors")
        save_file({"w": w1.to(torch.bfloat16)}, f"{d}/f.safetensors")
        del w0, w1
        with open_checkpoint(f"{d}/b.safetensors") as b, open_checkpoint(f"{d}/f.safetensors") as f:
            opts = DiffOptions(spectral="off")
            plan = make_plan(pair_checkpoints(b, {"f": f}, opts), resolve_pairs(["f"], None), opts,
                             Env("cpu", kernel.fused is not None, 1, 1))
        with reader_scope():
            run_job(plan.cheap[0])  # warm the page cache and the kernel
            t0 = time.perf_counter()
            for j in plan.cheap:
                run_job(j)
            return (time.perf_counter() - t0) / (m * n)


def schedule(costs: list[float], workers: int) -> float:
    """Greedy list schedule, largest first (the plan's order for spectral jobs): the makespan."""
    ends = [0.0] * workers
    heapq.heapify(ends)
    for c in sorted(costs, reverse=True):
        heapq.heappush(ends, heapq.heappop(ends) + c)
    return max(ends)


def _hm(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    import torch
    torch.set_num_threads(1)

    rows = []
    cheap_per_elem = time_cheap(H, H)
    rows.append(("cheap pass", f"{H} x {H} bf16", H * H, cheap_per_elem * H * H))
    fast_shapes = [(KV, H), (2048, 2048), (4096, 4096)] if a.quick else [(KV, H), (H, H), (H, I)]
    fast_c = []
    for m, n in fast_shapes:
        s = time_spectral("fast", m, n)
        rows.append(("spectral fast", f"{m} x {n}", m * n, s))
        fast_c.append(s / (m * n))
    full_c = []
    for m, n in [(KV, H), (1024, 1024), (2048, 2048)]:
        s = time_spectral("full", m, n)
        rows.append(("spectral full", f"{m} x {n}", m * n, s))
        full_c.append(s / (m * n * min(m, n)))
    c_fast, c_full = sorted(fast_c)[len(fast_c) // 2], sorted(full_c)[len(full_c) // 2]

    print("measured (1 torch thread, this machine):\n| step | shape | seconds | constant |\n|---|---|---|---|")
    for step, shape, _, s in rows:
        m, n = (int(x) for x in shape.split(" ")[0::2][:2])
        k = s / (m * n) if step != "spectral full" else s / (m * n * min(m, n))
        print(f"| {step} | {shape} | {s:.2f} | {k:.3e} s/{'elem' if step != 'spectral full' else 'm n min(m,n)'} |")

    tensors = llama3_70b()
    numel = sum(math.prod(s) for _, s in tensors)
    part = 64 * (1 << 18)
    cheap_jobs = [cheap_per_elem * min(part, math.prod(s) - st) for _, s in tensors
                  for st in range(0, math.prod(s), part)]
    mats = [s for _, s in tensors if len(s) == 2]
    fast_jobs = [c_fast * m * n for m, n in mats]
    full_jobs = [c_full * m * n * min(m, n) for m, n in mats]
    nbytes = 2 * 2 * numel  # bf16, base and fine-tune
    print(f"\nLlama-3-70B pair: {numel / 1e9:.1f}B parameters, {nbytes / 1e9:.0f} GB read per pass "
          f"({len(cheap_jobs)} cheap jobs, {len(mats)} spectral jobs)")
    print(f"assumed storage: {PER_WORKER_GBPS} GB/s per worker, {AGGREGATE_GBPS} GB/s aggregate")
    print("\n| workers | cheap pass (--spectral off) | + spectral fast | + spectral full | cheap pass storage-bound |\n"
          "|---|---|---|---|---|")
    for w in (1, 8, 64):
        io_s = nbytes / 1e9 / min(w * PER_WORKER_GBPS, AGGREGATE_GBPS)
        cheap = max(schedule(cheap_jobs, w), io_s)
        fast = max(schedule(fast_jobs, w), io_s)
        full = max(schedule(full_jobs, w), io_s)
        bound = "yes" if io_s >= schedule(cheap_jobs, w) else "no"
        print(f"| {w} | {_hm(cheap)} | {_hm(cheap + fast)} | {_hm(cheap + full)} | {bound} |")
    big = V * H
    print(f"\nlargest job: the {V} x {H} embedding/head, full SVD: {c_full * big * H / 3600:.2f} h on one core "
          f"(no worker count makes `full` faster than that); memory ~ {2 * 4 * big / 2**30 + 3 * 4 * H * H / 2**30:.1f}"
          f" GiB: W0 and W1 in float32 ({4 * big / 2**30:.1f} GiB each); a tall matrix's QR goes by row blocks and "
          f"D is never formed whole (docs/metrics.md), so the rest is the R factor, V0 and V1 "
          f"({4 * H * H / 2**30:.2f} GiB each) and a few {4096} x {H} blocks; a worker needs that much memory "
          "(Ray's `memory` resource keeps two such jobs off one node).")

if __name__ == "__main__":
    main()
