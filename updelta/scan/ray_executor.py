"""The Ray executor: a plan's jobs as Ray tasks, on a local Ray or an existing cluster (docs/cluster.md).

Same contract as the local executors (`updelta.scan.executors`): `map(fn, jobs, cost)` yields `fn(job)` in the
order of `jobs`. What travels:

- to a task: the job itself (plain data: locations with paths or URLs, tensor names, element ranges, the
  options, the BLAS threads per job; see `updelta.scan.plan`) and `fn` by reference (`updelta.scan.jobs.cheap.run_job`, ...).
  Tasks read the bytes themselves, from storage every node sees under the same path (or URLs);
- back: the same partial results the local executors return (per-block partial sums, histograms, a few
  columns), never tensors.

The plan does not depend on the executor, so the tables are the same as with `threads` (docs/cluster.md).

Connection (`RayExecutor.connect`): a Ray this process is already connected to (`ray.init` called by the
caller) is used as it is and left running. Otherwise `ray.init(address)`, whose rules apply: an empty address
means `RAY_ADDRESS`, then a cluster started with `ray start` on this machine, then a new local Ray; `local`
always starts a new local Ray; `ray://host:10001` or `host:6379` join that cluster. Whatever this executor
connected or started, `close()` disconnects or shuts down (the engine closes it when the scan ends).

Scheduling: at most `workers` tasks in flight (the plan's workers); each asks for 1 CPU, 1 GPU on a CUDA plan,
and Ray's `memory` resource of its `cost` (capped at the largest node's), so a node never runs more big jobs
than its memory holds. Each task runs in its own `reader_scope`: files are opened and closed by the task,
so a long-lived worker never reads a file through a stale descriptor.

Failures: a worker process that dies is retried (`max_retries`, Ray's own mechanism); an exception raised by a
job (a corrupt shard) is raised again here as itself, unwrapped from Ray's `RayTaskError`, so it is the same
one-line `UpdeltaError` as with the local executors. Closing the generator (an error, Ctrl-C) force-cancels the
tasks still outstanding and waits until Ray reports them done (`RayExecutor._cancel` says why force, and why
cancelling again).
"""
from __future__ import annotations

import time
from typing import Callable, Iterator, Sequence, TypeVar

from updelta.errors import UpdeltaError

J = TypeVar("J")
R = TypeVar("R")

MAX_RETRIES = 3  # Ray retries of a task whose worker process died (not of a job that raised)
WAIT_S = 0.5  # ray.wait timeout: the driver returns to Python this often (Ctrl-C is handled promptly)
CANCEL_RETRY_S = 0.5  # a task not done this long after its cancel is cancelled again (`_cancel`)
CANCEL_DEADLINE_S = 10.0  # how long closing waits for the cancels to land


def _run_task(fn, job):
    """What a Ray task runs: `fn(job)` with its files opened and closed inside the task."""
    from updelta.io.readers import reader_scope  # torch: not in the Ray driver until a job runs

    with reader_scope():
        return fn(job)


def import_ray():
    try:
        import ray  # optional extra: ray
    except ImportError:
        raise UpdeltaError("--executor ray: ray is not installed; pip install 'updelta[ray]' "
                           "(or use --executor threads)") from None
    return ray


class RayExecutor:
    """`workers` Ray tasks in flight at once, on the Ray that `address` names (see the module docstring)."""

    def __init__(self, workers: int, address: str = ""):
        self.workers = max(1, int(workers))
        self.address = address or ""
        self.ray = import_ray()
        self._owned = False  # this executor called ray.init, so close() calls ray.shutdown
        self._task = None
        self._node_memory = 0
        self._outstanding: set = set()

    def connect(self):
        """Connect (or start) Ray once; returns the ray module."""
        ray = self.ray
        if self._task is not None:
            return ray
        if not ray.is_initialized():
            kwargs = dict(include_dashboard=False, log_to_driver=True, configure_logging=False)
            try:
                ray.init(address=self.address or None, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise UpdeltaError(f"--ray-address {self.address or '(auto)'}: cannot connect to Ray ({first}); "
                                   "give the head's address, or `local` for a new local Ray") from None
            self._owned = True
        mem = [float(n.get("Resources", {}).get("memory", 0)) for n in ray.nodes() if n.get("Alive")]
        self._node_memory = int(max(mem, default=0))
        self._task = ray.remote(_run_task)
        return ray

    def _submit(self, fn, job, cost: int):
        opts = {"num_cpus": 1, "max_retries": MAX_RETRIES, "retry_exceptions": False}
        if str(getattr(job, "device", "cpu")).startswith("cuda"):
            opts["num_gpus"] = 1  # one GPU per worker (docs/cluster.md)
        if cost > 0 and self._node_memory > 0:
            opts["memory"] = min(int(cost), self._node_memory)
        return self._task.options(**opts).remote(fn, job)

    def _get(self, ref, job):
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:  # the job raised: raise its own exception, as locally
            cause = getattr(e, "cause", None)
            if isinstance(cause, BaseException):
                if not isinstance(cause, UpdeltaError) and hasattr(cause, "add_note"):
                    cause.add_note(f"(in a Ray task; remote traceback follows)\n{e}")
                raise cause from None
            raise
        except ray.exceptions.RayError as e:  # the worker died past its retries, a node was lost, OOM-killed
            first = (str(e).strip().splitlines() or [""])[0][:200]
            name = getattr(getattr(job, "tensor", None), "name", "?")
            raise UpdeltaError(f"--executor ray: the task of tensor {name} failed after {MAX_RETRIES} retries "
                               f"({type(e).__name__}: {first}); check the workers' memory and logs "
                               "(docs/cluster.md)") from None

    def map(self, fn: Callable[[J], R], jobs: Sequence[J], cost: Callable[[J], int] | None = None) -> Iterator[R]:
        jobs = list(jobs)
        if not jobs:
            return
        ray = self.connect()
        refs: dict[int, object] = {}
        inflight: set = set()
        nxt = 0  # next job to submit (plan order)

        def top_up() -> None:
            nonlocal nxt
            while nxt < len(jobs) and len(inflight) < self.workers:
                ref = self._submit(fn, jobs[nxt], cost(jobs[nxt]) if cost else 0)
                refs[nxt] = ref
                inflight.add(ref)
                self._outstanding.add(ref)
                nxt += 1

        try:
            for i in range(len(jobs)):
                top_up()
                while refs[i] in inflight:
                    ready, _ = ray.wait(list(inflight), num_returns=1, timeout=WAIT_S)
                    for r in ready:
                        inflight.discard(r)
                        self._outstanding.discard(r)
                    top_up()
                yield self._get(refs.pop(i), jobs[i])
        finally:
            self._cancel(inflight)

    def _cancel(self, refs) -> None:
        """Force-cancel `refs` and wait until Ray reports each one done, cancelling again every CANCEL_RETRY_S.

        force=True, because a polite cancel raises KeyboardInterrupt only when the task next runs Python bytecode
        (an SVD or a read in C runs on) and can leave a reused worker half-way through an import (a later task
        then fails importing torch); a force cancel kills the worker process and Ray starts a fresh one. Cancelling
        again, because a cancel that reaches a task between its lease and its start on the worker is sometimes
        lost (seen with Ray 2.60); CANCEL_DEADLINE_S bounds the wait."""
        ray = self.ray
        pending = list(refs)
        deadline = time.monotonic() + CANCEL_DEADLINE_S
        while pending:
            for r in pending:
                try:
                    ray.cancel(r, force=True)
                except Exception:  # already finished, or the cluster is gone: nothing to cancel
                    pass
            if time.monotonic() >= deadline:
                break
            try:
                _, pending = ray.wait(pending, num_returns=len(pending), timeout=CANCEL_RETRY_S, fetch_local=False)
            except Exception:  # the cluster is gone
                break
        for r in list(refs):
            self._outstanding.discard(r)

    def close(self) -> None:
        """Cancel what is still outstanding; shut down (or disconnect from) a Ray this executor started."""
        if self._outstanding:
            self._cancel(self._outstanding)
        if self._owned and self.ray.is_initialized():
            self.ray.shutdown()
        self._owned = False
        self._task = None

