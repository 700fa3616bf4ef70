"""Execution seam: picklable jobs, executors that never change a number, memory-aware scheduling."""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import pickle
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd
import pytest
import torch

import updelta
from updelta.scan.jobs import kernel
from updelta.scan import engine
from updelta.scan.executors import SerialExecutor, ThreadExecutor, make_executor
from updelta.io import open_checkpoint
from updelta.io.locations import TensorLocation
from updelta.io.readers import _FILES, open_reader, reader_scope
from updelta.scan.jobs.cheap import run_job, tensor_records
from updelta.scan.jobs.spectral import run_spectral_job
from updelta.options import DiffOptions
from updelta.scan.pairing import pair_checkpoints
from updelta.scan.plan import Env, make_plan, resolve_pairs

import ckpt

ENV = Env(device="cpu", kernel=kernel.fused is not None, cores=2, torch_threads=2)


def _tables(res) -> tuple[pd.DataFrame, pd.DataFrame]:
    return res.tensors.drop(columns=["spectral_s"], errors="ignore"), res.pairs


def _plan(base, runs: dict, opts: DiffOptions, env: Env = ENV):
    b = open_checkpoint(base)
    cks = {r: open_checkpoint(p) for r, p in runs.items()}
    pairing = pair_checkpoints(b, cks, opts)
    return make_plan(pairing, resolve_pairs(list(runs), None), opts, env), [b, *cks.values()]


@pytest.mark.parametrize("spectral", ["off", "fast", "full"])
def test_serial_and_threads_identical_bit_for_bit(llama_runs, spectral):
    """Same plan (workers=2, so one BLAS thread per job either way): every column equal, spectral ones too."""
    b, runs = llama_runs
    opts = dict(spectral=spectral, histogram=True, block_elems=37, workers=2, cache=False)  # 37: parts
    ser = _tables(updelta.compare(b, runs, executor="serial", **opts))
    thr = _tables(updelta.compare(b, runs, executor="threads", **opts))
    for s, t in zip(ser, thr):
        pd.testing.assert_frame_equal(s, t, check_exact=True)
    assert len(ser[0]) == 3 * 21 and len(ser[1]) == 3 * 21
    if spectral != "off":
        assert ser[0]["stable_rank"].notna().sum() == 3 * 16  # 2-D tensors got spectral columns


def test_workers_change_spectral_numbers_only_within_tolerance(llama_pair):
    """workers=1 gives a job every BLAS thread, workers=2 one each: cheap and count columns stay bit-identical;
    singular values agree within 1e-5 relative (BLAS summation order; 1e-6..3e-6 measured)."""
    b, f, _, _ = llama_pair
    one = updelta.diff(b, f, spectral="fast", workers=1).tensors
    two = updelta.diff(b, f, spectral="fast", workers=2).tensors
    cheap = ["delta_fro", "base_fro", "delta_max", "delta_mean_abs", "cos_delta_base", "sparsity_exact",
             "sparsity_atol", "sparsity_rtol", "n_compared", "nonfinite_base", "nonfinite_ft"]
    pd.testing.assert_frame_equal(one[cheap], two[cheap], check_exact=True)
    m = one["topk_sv"].notna()
    np.testing.assert_allclose(np.stack(one["topk_sv"][m]), np.stack(two["topk_sv"][m]), rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(one["stable_rank"][m], two["stable_rank"][m], rtol=1e-5)


def test_split_parts_combine_exactly_as_one_pass(tmp_path):
    """A tensor split in many parts gives the same bits as one part (partial sums added in block order)."""
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(300, 70, generator=g)
    w1 = w0 + torch.randn(300, 70, generator=g) * 1e-3 * (torch.rand(300, 70, generator=g) < 0.3)
    b = ckpt.save({"w": w0}, tmp_path / "b.safetensors")
    f = ckpt.save({"w": w1}, tmp_path / "f.safetensors")
    opts = DiffOptions(spectral="off", block_elems=50)
    plan, cks = _plan(b, {"f": f}, opts)
    assert len(plan.cheap) == -(-300 * 70 // (50 * 64)) > 1
    whole = dataclasses.replace(plan.cheap[0], part=0, parts=1, start=0, count=300 * 70)
    split = tensor_records(plan.tensors[0], [run_job(j) for j in reversed(plan.cheap)]).records[0]
    one = tensor_records(plan.tensors[0], [run_job(whole)]).records[0]
    assert split == one
    assert split["n_compared"] == 300 * 70
    for ck in cks:
        ck.close()


def test_jobs_pickle_and_run_in_another_process(tmp_path, llama_runs):
    """Jobs hold plain data only: they pickle, and a process pool (a stand-in for any remote executor) gives
    the same records as this process."""
    b, runs = llama_runs
    runs = dict(list(runs.items())[:2])
    opts = DiffOptions(spectral="fast", block_elems=100)
    plan, cks = _plan(b, runs, opts)
    for ck in cks:
        ck.close()  # jobs need no open checkpoint
    for j in (*plan.cheap, *plan.spectral):
        back = pickle.loads(pickle.dumps(j))
        assert back == j
    local = [run_job(j) for j in plan.cheap]
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        remote = list(pool.map(run_job, plan.cheap))
        spec_remote = list(pool.map(run_spectral_job, plan.spectral[:2]))
    by_tensor = {}
    for a, r in zip(local, remote):
        assert a.sums == r.sums and a.pair_sums == r.pair_sums and a.nbytes == r.nbytes
        by_tensor.setdefault(a.tensor, []).append(r)
    recs = tensor_records(plan.tensors[0], by_tensor[0])
    assert recs.records[0]["name"] == plan.tensors[0].name and recs.pair_records
    for job, cols in zip(plan.spectral[:2], spec_remote):
        mine = run_spectral_job(job)
        assert set(cols) == set(runs)
        for r in runs:
            assert cols[r]["topk_sv"] == mine[r]["topk_sv"]


def test_plan_does_not_depend_on_the_executor(llama_pair):
    b, f, _, _ = llama_pair
    p1, c1 = _plan(b, {"ft": f}, DiffOptions(executor="serial", workers=2, block_elems=40))
    p2, c2 = _plan(b, {"ft": f}, DiffOptions(executor="threads", workers=2, block_elems=40))
    shape = lambda p: [(j.tensor.name, j.start, j.count, j.block, j.threads) for j in p.cheap]  # noqa: E731
    assert shape(p1) == shape(p2) and p1.spectral_threads == p2.spectral_threads == 1
    assert [j.tensor.name for j in p1.spectral] == [j.tensor.name for j in p2.spectral]
    costs = [j.cost for j in p1.spectral]
    assert costs == sorted(costs, reverse=True)  # largest first
    for ck in c1 + c2:
        ck.close()


def test_threads_per_job_from_workers_and_restored_after_scan(llama_pair):
    b, f, _, _ = llama_pair
    with open_checkpoint(b) as cb, open_checkpoint(f) as cf:
        pairing = pair_checkpoints(cb, {"ft": cf}, DiffOptions())
        def plan(workers, env):
            return make_plan(pairing, (), DiffOptions(workers=workers), env)
        assert plan(1, Env("cpu", True, 8, 8)).spectral_threads == 8
        assert plan(3, Env("cpu", True, 8, 8)).spectral_threads == 2
        assert plan(3, Env("cpu", True, 8, 8)).cheap_threads == 8
        assert (plan(0, Env("cpu", True, 8, 8)).workers, plan(0, Env("cpu", True, 2, 2)).workers) == (4, 2)
        assert plan(0, Env("cuda", False, 8, 8)).workers == 1
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        updelta.diff(b, f, spectral="fast", workers=2)  # jobs run with 1 thread each
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


class _Recorder:
    """An instrumented job function: records which jobs are in flight together."""

    def __init__(self):
        self.lock = threading.Lock()
        self.now: set[int] = set()
        self.together: list[frozenset[int]] = []
        self.peak = 0

    def __call__(self, job: int) -> int:
        with self.lock:
            self.now.add(job)
            self.together.append(frozenset(self.now))
            self.peak = max(self.peak, len(self.now))
        time.sleep(0.02)
        with self.lock:
            self.now.discard(job)
        return job * 10


def test_memory_budget_keeps_the_largest_jobs_apart():
    costs = {0: 70, 1: 60, 2: 10, 3: 10, 4: 10, 5: 10, 6: 55, 7: 10}  # budget 100: 0, 1 and 6 exceed half
    rec = _Recorder()
    out = list(ThreadExecutor(3, memory_budget=100).map(rec, list(costs), cost=costs.__getitem__))
    assert out == [j * 10 for j in costs]  # plan order, whatever order they finished in
    big = {0, 1, 6}
    assert all(len(s & big) <= 1 for s in rec.together), rec.together
    assert all(sum(costs[j] for j in s) <= 100 or len(s) == 1 for s in rec.together)
    assert rec.peak >= 2  # small jobs still ran beside a large one


def test_job_larger_than_budget_runs_alone_and_errors_propagate():
    rec = _Recorder()
    list(ThreadExecutor(4, memory_budget=10).map(rec, [0, 1, 2], cost=lambda j: 50 if j == 1 else 1))
    assert all(s == {1} for s in rec.together if 1 in s)

    def boom(j):
        if j == 3:
            raise ValueError("job 3 failed")
        return j
    with pytest.raises(ValueError, match="job 3"):
        list(ThreadExecutor(2).map(boom, range(8)))
    assert list(SerialExecutor().map(boom, range(3))) == [0, 1, 2]
    assert isinstance(make_executor(DiffOptions(executor="serial"), 4), SerialExecutor)
    assert make_executor(DiffOptions(), 3).workers == 3


def test_scan_spectral_jobs_run_in_parallel(monkeypatch, llama_pair):
    """Spectral work goes through the executor: with 2 workers, two tensors are in flight at once."""
    b, f, _, _ = llama_pair
    rec = _Recorder()
    inner = engine.run_spectral_job

    def spy(job):
        rec(id(job))
        return inner(job)
    monkeypatch.setattr(engine, "run_spectral_job", spy)
    r = updelta.diff(b, f, spectral="fast", workers=2)
    assert rec.peak == 2 and r.tensors["stable_rank"].notna().sum() == 16


def test_locations_read_like_checkpoint_refs(tmp_path):
    sd = ckpt.llama_state(dtype=torch.bfloat16)
    for path in (ckpt.save(sd, tmp_path / "st", shards=2), ckpt.save(sd, tmp_path / "bin", fmt="bin"),
                 ckpt.save(sd, tmp_path / "x.pt")):
        with open_checkpoint(path) as ck:
            for ref in list(ck.tensors.values())[:6]:
                loc = ref.location
                assert isinstance(loc, TensorLocation) and pickle.loads(pickle.dumps(loc)) == loc
                assert loc.format == ("safetensors" if path.name == "st" else "torch")
                with reader_scope():
                    got = open_reader(loc).read(3, 20)
                assert np.array_equal(got, ref.read(3, 20)) and got.dtype == np.uint16
    assert not _FILES.fds and not _FILES.torch  # the scope closed what it opened


def test_safetensors_location_reads_by_offset_without_the_header(tmp_path):
    w = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    p = ckpt.save({"a": torch.zeros(5), "w": w}, tmp_path / "m.safetensors")
    with open_checkpoint(p) as ck:
        loc = ck.tensors["w"].location
    assert loc.offset > 8 and loc.shape == (4, 6)
    with reader_scope():
        assert open_reader(loc).read(7, 5).tolist() == [7.0, 8.0, 9.0, 10.0, 11.0]
    fake = TensorLocation(str(p), "safetensors", "w", "float32", (1000,), loc.offset)  # past the end of the file
    with reader_scope(), pytest.raises(updelta.errors.CheckpointError, match="short read"):
        open_reader(fake).read(0, 1000)


def test_fds_closed_after_scan(llama_runs):
    b, runs = llama_runs
    n = len(os.listdir("/proc/self/fd"))
    updelta.compare(b, runs, spectral="off")
    assert len(os.listdir("/proc/self/fd")) == n and not _FILES.fds


def test_a_warm_decomposition_cache_changes_spectral_columns_only_within_tolerance(llama_runs, tmp_path, monkeypatch):
    """The base's cached decomposition (docs/metrics.md, Decompositions and the base cache) may be stored in a
    different orientation than it was computed in (V0 on the tall route): a warm cache gives the same cheap columns
    bit for bit and spectral columns within 1e-5."""
    monkeypatch.setenv("UPDELTA_SPECTRAL_CACHE_DIR", str(tmp_path / "cache"))
    b, runs = llama_runs
    opts = dict(spectral="full", block_elems=37, workers=2)
    cold = updelta.compare(b, runs, **opts).tensors
    assert any((tmp_path / "cache").rglob("*.safetensors"))  # the second run is served from the cache
    warm = updelta.compare(b, runs, **opts).tensors
    cheap = ["delta_fro", "base_fro", "cos_delta_base", "sparsity_exact", "n_compared"]
    pd.testing.assert_frame_equal(cold[cheap], warm[cheap], check_exact=True)
    for col in ("principal_cos_u", "principal_cos_v"):
        m = cold[col].notna()
        assert m.sum() > 0
        np.testing.assert_allclose(np.stack(cold[col][m]), np.stack(warm[col][m]), rtol=1e-5, atol=1e-6)


def test_executor_registry_matches_the_option_choices():
    """The executors by name (`scan.executors.EXECUTORS`) are exactly `DiffOptions.executor`'s choices."""
    import typing

    from updelta.options import Executor
    from updelta.scan.executors import EXECUTORS

    assert list(EXECUTORS) == list(typing.get_args(Executor))
