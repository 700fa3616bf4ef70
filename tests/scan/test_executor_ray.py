"""The Ray executor (updelta.scan.ray_executor): the same tables as the thread executor, one-line errors, retries of
a dying worker, cancellation, and huge tensors split into row-block jobs.

One local Ray (2 CPUs) serves every test here (a module fixture); under pytest-xdist the `ray` xdist group keeps
them on one worker (`make test` runs with --dist loadgroup), so CI starts one Ray, not one per test worker.
"""
from __future__ import annotations

import json
import struct
import time

import pandas as pd
import pytest
import torch

import ckpt
from clirun import run_main

ray = pytest.importorskip("ray")

import updelta  # noqa: E402
from updelta.trajectory import trajectory  # noqa: E402
from updelta.scan import engine  # noqa: E402
from updelta.scan.ray_executor import RayExecutor  # noqa: E402
from updelta.io import open_checkpoint  # noqa: E402
from updelta.options import DiffOptions  # noqa: E402
from updelta.scan.pairing import pair_checkpoints  # noqa: E402
from updelta.scan.plan import Env, make_plan, resolve_pairs  # noqa: E402

pytestmark = pytest.mark.xdist_group("ray")

TIMING = {"spectral_s", "spectral_s_total"}  # seconds: metadata, not numbers of the update
RESULT_TABLES = ("tensors", "summary", "components", "layers", "pairs", "pairs_summary", "pairs_components",
                 "pairs_layers", "experts")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _assert_tables_equal(a, b, tables=RESULT_TABLES):
    for name in tables:
        x, y = getattr(a, name), getattr(b, name)
        x, y = x.drop(columns=list(TIMING & set(x.columns))), y.drop(columns=list(TIMING & set(y.columns)))
        pd.testing.assert_frame_equal(x, y, check_exact=True, obj=name)


def _meta_without_timing(m: dict) -> dict:
    return {k: v for k, v in m.items() if k not in ("seconds", "options")}


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("rayruns")
    base = ckpt.llama_state()
    b = ckpt.save(base, d / "base")
    runs = {n: ckpt.save(ckpt.perturb(base, frac=f, scale=s, seed=seed), d / n)
            for n, f, s, seed in (("sft", 0.9, 2e-2, 1), ("dft", 0.5, 1e-2, 2), ("grpo", 0.2, 5e-3, 3))}
    return b, runs


def test_compare_tables_identical_to_threads(local_ray, three_runs):
    """3 runs, --spectral full, histograms, tensors split in parts (block 37): every table equal bit for bit
    (workers=2 either way, so each spectral job has the same BLAS threads)."""
    b, runs = three_runs
    # cache=False: a warm base-decomposition cache may change spectral bits within tolerance (test_executors)
    opts = dict(spectral="full", histogram=True, block_elems=37, workers=2, progress=False, cache=False)
    thr = updelta.compare(b, runs, executor="threads", **opts)
    on_ray = updelta.compare(b, runs, executor="ray", **opts)
    _assert_tables_equal(on_ray, thr)
    assert len(on_ray.tensors) == 3 * 21 and len(on_ray.pairs) == 3 * 21
    assert on_ray.tensors["stable_rank"].notna().sum() == 3 * 16 and on_ray.tensors["hist"].notna().all()
    assert on_ray.tensors["intruders"].notna().sum() == 3 * 16  # a `full` column reached the driver
    assert on_ray.meta["options"]["executor"] == "ray"
    assert _meta_without_timing(on_ray.meta) == _meta_without_timing(thr.meta)
    assert ray.is_initialized()  # the caller's Ray is left running


def test_trajectory_tables_identical_to_threads(local_ray, tmp_path):
    base = ckpt.llama_state(dtype=torch.float32)
    b = ckpt.save(base, tmp_path / "base")
    cur = base
    for k, s in enumerate((10, 20, 30, 40, 50, 60)):
        cur = ckpt.perturb(cur, frac=0.3, scale=1e-3, seed=10 + k)
        ckpt.save(cur, tmp_path / "out" / f"checkpoint-{s}")
    glob = str(tmp_path / "out" / "checkpoint-*")
    opts = dict(spectral="fast", block_elems=64, workers=2, progress=False)
    thr = trajectory(b, glob, **opts)
    on_ray = trajectory(b, glob, executor="ray", **opts)
    drop = [c for c in thr.table.columns if c in TIMING]
    pd.testing.assert_frame_equal(on_ray.table.drop(columns=drop), thr.table.drop(columns=drop), check_exact=True)
    _assert_tables_equal(on_ray.result, thr.result)
    assert on_ray.model()["step"].tolist() == [10, 20, 30, 40, 50, 60]
    assert on_ray.model()["cos_prev_update"].notna().sum() == 5


def _truncate_after_planning(monkeypatch, victim):
    """The shard changes on shared storage after the driver validated it: the job reading it must fail."""
    inner = engine.make_plan

    def plan_then_truncate(*a, **k):
        plan = inner(*a, **k)
        with open(victim, "r+b") as fh:
            fh.truncate(victim.stat().st_size // 2)
        return plan
    monkeypatch.setattr(engine, "make_plan", plan_then_truncate)


def test_corrupt_shard_is_the_same_one_line_error_exit_2(local_ray, three_runs, tmp_path, monkeypatch, capsys):
    b, runs = three_runs
    errs = {}
    for ex in ("threads", "ray"):
        run = ckpt.save(ckpt.perturb(ckpt.llama_state(), seed=7), tmp_path / ex / "bad")
        _truncate_after_planning(monkeypatch, run / "model.safetensors")
        out = tmp_path / ex / "res"
        code, _, err = run_main(monkeypatch, capsys, "compare", b, f"bad={run}", f"sft={runs['sft']}",
                                "--executor", ex, "--spectral", "off", "--no-progress", "--out", out)
        assert code == 2 and not out.exists(), err
        errs[ex] = err.replace(str(tmp_path / ex), "DIR")
    lines = errs["ray"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("updelta: ") and "short read" in lines[0], errs["ray"]
    assert "model.safetensors" in lines[0] and "Traceback" not in errs["ray"]
    assert errs["ray"] == errs["threads"]


def test_dying_worker_is_retried_and_job_errors_unwrapped(local_ray, tmp_path):
    marker = str(tmp_path / "crashed")

    def crash_once(j):  # a closure: pickled by value, so the workers need not import this test module
        import os
        if j == 2 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)  # the worker process dies; Ray retries the task in a new one
        return j * 10

    assert list(RayExecutor(2).map(crash_once, [1, 2, 3])) == [10, 20, 30]
    assert (tmp_path / "crashed").exists()

    def bad(j):
        if j == 1:
            raise ValueError(f"job {j} refused")
        return j

    with pytest.raises(ValueError, match="job 1 refused"):  # the job's own exception, not RayTaskError
        list(RayExecutor(2).map(bad, [0, 1, 2]))


def test_closing_the_map_cancels_outstanding_tasks(local_ray):
    """Closing the generator (an error or Ctrl-C in the driver) force-cancels both outstanding 60 s tasks within
    seconds, in every round: a cancel that reaches a task between its lease and its start was sometimes lost
    with one polite `ray.cancel` (2 of 5 CI runs; 8 of 10 rounds of this loop). Then a job that imports torch
    still runs: a polite cancel could interrupt a reused worker inside `import torch`."""
    def nap(s):
        import time as t
        t.sleep(s)
        return s

    for _ in range(3):
        ex = RayExecutor(2)
        submitted = []
        inner = ex._submit
        ex._submit = lambda fn, job, cost: submitted.append(inner(fn, job, cost)) or submitted[-1]
        g = ex.map(nap, [0, 60, 60])
        assert next(g) == 0
        t0 = time.perf_counter()
        g.close()  # what an error or Ctrl-C in the driver does
        ex.close()
        assert len(submitted) == 3
        for ref in submitted[1:]:
            with pytest.raises(ray.exceptions.TaskCancelledError):
                ray.get(ref, timeout=30)
        assert time.perf_counter() - t0 < 15

    def torch_sum(n):
        import torch as th
        return float(th.arange(n, dtype=th.float64).sum())

    assert list(RayExecutor(2).map(torch_sum, [3, 4, 5])) == [3.0, 6.0, 10.0]


def test_ray_address_needs_the_ray_executor():
    with pytest.raises(updelta.errors.UpdeltaError, match="--ray-address 'local' applies to --executor ray"):
        DiffOptions(ray_address="local")
    assert DiffOptions(executor="ray", ray_address="local").ray_address == "local"


def _sparse_safetensors(path, shape, dtype="BF16"):
    """A valid safetensors file of one tensor whose data is a hole (planning reads only the header)."""
    n = 2 * shape[0] * shape[1]
    header = json.dumps({"w": {"dtype": dtype, "shape": list(shape), "data_offsets": [0, n]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(header)) + header)
        fh.truncate(8 + len(header) + n)
    return path


def test_a_152k_by_8192_embedding_is_split_into_row_blocks(tmp_path):
    """1.25G elements: cheap jobs of PART_BLOCKS default blocks = 2048 whole rows each; the parts tile the
    tensor in order (test_executors checks that such parts add up bit for bit as one pass)."""
    rows, cols = 152064, 8192
    b = _sparse_safetensors(tmp_path / "b.safetensors", (rows, cols))
    f = _sparse_safetensors(tmp_path / "f.safetensors", (rows, cols))
    with open_checkpoint(b) as cb, open_checkpoint(f) as cf:
        pairing = pair_checkpoints(cb, {"f": cf}, DiffOptions())
        plan = make_plan(pairing, resolve_pairs(["f"], None), DiffOptions(executor="ray", workers=64),
                         Env("cpu", True, 16, 16))
    jobs = plan.cheap
    assert len(jobs) == -(-rows // 2048) == 75
    assert all(j.start % cols == 0 and j.start == k * 2048 * cols for k, j in enumerate(jobs))
    assert sum(j.count for j in jobs) == rows * cols and all(j.count == 2048 * cols for j in jobs[:-1])
    assert [j.part for j in jobs] == list(range(75)) and {j.parts for j in jobs} == {75}
    assert len(plan.spectral) == 1 and plan.spectral_threads == 1  # 16 threads // 64 workers
