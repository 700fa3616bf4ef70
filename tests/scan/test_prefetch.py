"""The CUDA path's block reader (updelta.scan.jobs.prefetch), run on the CPU through the same code: the same bytes as the
plain loop, one block read ahead, a held block never overwritten, and run_job's numbers unchanged."""
from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest
import torch

import ckpt
from updelta.scan.jobs import kernel as kernel_mod
from updelta.scan.jobs import cheap as jobs
from updelta.scan.jobs.read import Buffers
from updelta.scan.jobs import prefetch
from updelta.io import open_checkpoint
from updelta.io.readers import open_reader, reader_scope
from updelta.options import DiffOptions
from updelta.scan.pairing import pair_checkpoints
from updelta.scan.plan import Env, make_plan, resolve_pairs


@pytest.fixture
def plan_of(tmp_path):
    """A plan of a bf16 base against two runs, with blocks that do not divide the tensors evenly."""
    def make(kernel: bool, block: int = 333):
        g = torch.Generator().manual_seed(0)
        w0 = torch.randn(97, 64, generator=g).to(torch.bfloat16)
        runs = {}
        for k in (1, 2):
            w1 = (w0.float() + 1e-2 * torch.randn(97, 64, generator=g) * (torch.rand(97, 64, generator=g) < .4))
            runs[f"r{k}"] = ckpt.save({"w": w1.to(torch.bfloat16)}, tmp_path / f"r{k}.safetensors")
        b = ckpt.save({"w": w0}, tmp_path / "b.safetensors")
        opts = DiffOptions(spectral="off", block_elems=block, histogram=True)
        cks = [open_checkpoint(b), *(open_checkpoint(p) for p in runs.values())]
        pairing = pair_checkpoints(cks[0], dict(zip(runs, cks[1:])), opts)
        plan = make_plan(pairing, resolve_pairs(list(runs), None), opts,
                         Env("cpu", kernel and kernel_mod.fused is not None, 2, 2))
        for ck in cks:
            ck.close()
        return plan
    return make


def _readers(job):
    return open_reader(job.tensor.base), {s.run: open_reader(s.loc) for s in job.tensor.sides}


def test_same_blocks_as_the_plain_loop_and_held_blocks_stay_intact(plan_of):
    job = plan_of(kernel=True).cheap[0]
    assert job.count % job.block != 0 and job.count // job.block >= 3
    with reader_scope():
        base, readers = _readers(job)
        plain = [(s, c, r0.copy(), {k: v.copy() for k, v in rs.items()})
                 for s, c, r0, rs in jobs._block_reads(job, base, readers, Buffers())]
        got = []
        for s, c, r0, rs in prefetch.block_reads(job, base, readers):
            time.sleep(0.02)  # the next block's read has finished meanwhile, into the other slot
            got.append((s, c, r0.copy(), {k: v.copy() for k, v in rs.items()}))
            assert np.array_equal(r0, plain[len(got) - 1][2])  # still this block's bytes, not the next one's
    assert [(s, c) for s, c, *_ in got] == [(s, c) for s, c, *_ in plain]
    for (_, _, a0, ar), (_, _, b0, br) in zip(got, plain):
        assert np.array_equal(a0, b0) and ar.keys() == br.keys()
        assert all(np.array_equal(ar[k], br[k]) for k in ar)


class _SlowReader:
    """A reader that records when each read runs (a stand-in for storage latency)."""

    def __init__(self, inner, log, lock):
        self.inner, self.log, self.lock = inner, log, lock

    def read(self, start, count, out=None):
        t0 = time.perf_counter()
        time.sleep(0.03)
        got = self.inner.read(start, count, out)
        with self.lock:
            self.log.append((start, t0, threading.current_thread().name))
        return got


def test_the_next_block_is_read_while_the_caller_computes(plan_of):
    job = plan_of(kernel=True).cheap[0]
    log, lock = [], threading.Lock()
    with reader_scope():
        base, readers = _readers(job)
        base = _SlowReader(base, log, lock)
        computed = []
        for s, c, r0, rs in prefetch.block_reads(job, base, readers):
            t0 = time.perf_counter()
            time.sleep(0.06)  # "device work" on this block
            computed.append((s, t0))
    reads = {s: t for s, t, _ in log}
    # block k+1's read started while block k was being computed (before its compute ended)
    for (s, t0), (s_next, _) in zip(computed, computed[1:]):
        assert reads[s_next] < t0 + 0.06, (s, s_next)
    assert all(name.startswith("updelta-prefetch") for *_, name in log)


@pytest.mark.parametrize("kernel", [True, False])
def test_run_job_through_the_prefetch_path_gives_the_same_numbers(plan_of, monkeypatch, kernel):
    """kernel False: the torch block function, the one the CUDA path uses."""
    plan = plan_of(kernel=kernel)
    assert len(plan.cheap) == 1 and plan.cheap[0].kernel == (kernel and kernel_mod.fused is not None)
    job = plan.cheap[0]
    plain = jobs.run_job(job)
    monkeypatch.setattr(prefetch, "wanted", lambda j: True)
    with reader_scope():
        ahead = jobs.run_job(job)
    assert ahead.sums == plain.sums and ahead.pair_sums == plain.pair_sums and ahead.nbytes == plain.nbytes
    assert ahead.hists.keys() == plain.hists.keys()
    assert all(np.array_equal(ahead.hists[r], plain.hists[r]) for r in ahead.hists)
    assert sum(b[0] for b in plain.sums["r1"]) == 97 * 64  # every element counted once
    one = jobs.tensor_records(job.tensor, [ahead]).records
    assert one == jobs.tensor_records(job.tensor, [plain]).records


def test_only_cuda_jobs_take_the_prefetch_path(plan_of):
    job = plan_of(kernel=False).cheap[0]
    assert not prefetch.wanted(job)
    assert prefetch.wanted(dataclasses.replace(job, device="cuda")) and prefetch.wanted(
        dataclasses.replace(job, device="cuda:1"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu_check.sh)")
def test_cuda_matches_cpu(plan_of):
    plan = plan_of(kernel=True)
    job = plan.cheap[0]
    cpu = jobs.tensor_records(job.tensor, [jobs.run_job(job)]).records
    cj = dataclasses.replace(job, device="cuda", kernel=False)
    with reader_scope():
        gpu = jobs.tensor_records(job.tensor, [jobs.run_job(cj)]).records
    for a, b in zip(cpu, gpu):
        for k, v in a.items():
            if isinstance(v, float) and k.startswith("cos"):  # bounded by 1; cancels near 0
                assert b[k] == pytest.approx(v, abs=1e-6), k
            elif isinstance(v, float) and k.startswith("dot"):
                assert b[k] == pytest.approx(v, abs=1e-6 * a["delta_fro"] * a["base_fro"]), k
            elif isinstance(v, float):
                assert b[k] == pytest.approx(v, rel=1e-6, abs=1e-12), k
            else:
                assert b[k] == v, k
