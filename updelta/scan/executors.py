"""Executors: how a plan's jobs run. The only modules that know about threads and clusters are this one and
`updelta.scan.ray_executor` (Ray tasks on a local Ray or a cluster, docs/cluster.md).

An executor maps a pure job function over picklable jobs and yields the results in the order of
the jobs, whatever order they finish in. It never changes a number: splits, combination order
and BLAS threads per job are fixed by the plan (`updelta.scan.plan`). A process pool, Ray or a GPU
queue plugs in by implementing `Executor.map`; metrics and readers stay as they are.

`ThreadExecutor` schedules by memory: a job starts when a worker is free and the `cost` (bytes)
of the jobs in flight plus its own fits in `memory_budget`; a job that does not fit waits while
later jobs that fit start, and a job larger than the whole budget runs alone. So two jobs that
each need more than half the budget never run side by side.
"""
from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable, Iterator, Protocol, Sequence, TypeVar

from updelta.errors import UpdeltaError
from updelta.options import DiffOptions
from updelta.scan.ray_executor import RayExecutor

J = TypeVar("J")
R = TypeVar("R")


class Executor(Protocol):
    def map(self, fn: Callable[[J], R], jobs: Sequence[J], cost: Callable[[J], int] | None = None) -> Iterator[R]:
        """fn(job) for every job, yielded in the order of `jobs`; `cost(job)`: bytes the job holds while it runs."""

    def close(self) -> None:
        """Release what the executor holds (the engine calls it when a scan ends, also on errors and Ctrl-C)."""


class SerialExecutor:
    """One job at a time, in the calling thread."""

    def map(self, fn, jobs, cost=None):
        for j in jobs:
            yield fn(j)

    def close(self) -> None:
        pass


def default_memory_budget() -> int:
    """Half of the memory available now (MemAvailable, else half the physical memory; 8 GiB if unknown)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


class ThreadExecutor:
    """`workers` threads in this process, scheduled by a memory budget (bytes; default `default_memory_budget`)."""

    def __init__(self, workers: int, memory_budget: int | None = None):
        self.workers = max(1, int(workers))
        self.memory_budget = memory_budget

    def map(self, fn, jobs, cost=None):
        jobs = list(jobs)
        if self.workers == 1 or len(jobs) <= 1:
            yield from SerialExecutor().map(fn, jobs)
            return
        budget = self.memory_budget if self.memory_budget is not None else default_memory_budget()
        costs = [max(0, int(cost(j))) if cost else 0 for j in jobs]
        pending = list(range(len(jobs)))  # not started, in plan order
        running: dict[Future, int] = {}
        done: dict[int, Future] = {}
        used = 0
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="updelta")

        def start_what_fits() -> None:  # earliest first; a job that does not fit lets later ones pass
            nonlocal used
            k = 0
            while len(running) < self.workers and k < len(pending):
                i = pending[k]
                if running and used + costs[i] > budget:
                    k += 1
                    continue
                pending.pop(k)
                running[pool.submit(fn, jobs[i])] = i
                used += costs[i]

        try:
            for i_next in range(len(jobs)):
                start_what_fits()
                while i_next not in done:
                    finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                    for f in finished:
                        i = running.pop(f)
                        used -= costs[i]
                        done[i] = f
                    start_what_fits()
                yield done.pop(i_next).result()
        finally:
            for f in running:
                f.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        pass  # each map owns its pool


def make_executor(opts: DiffOptions, workers: int) -> Executor:
    """The executor `opts.executor` names, with `workers` (the plan's) threads or Ray tasks in flight."""
    make = EXECUTORS.get(opts.executor)
    if make is None:
        raise UpdeltaError(f"executor {opts.executor!r}: choose one of {', '.join(EXECUTORS)}")
    return make(opts, workers)


# The executors by name: the names are `options.Executor` (the CLI's choices and help); tests/scan/test_executors.py
# checks that the two agree.
EXECUTORS: dict[str, Callable[[DiffOptions, int], Executor]] = {
    "serial": lambda opts, workers: SerialExecutor(),
    "threads": lambda opts, workers: ThreadExecutor(workers),
    "ray": lambda opts, workers: RayExecutor(workers, opts.ray_address),
}
