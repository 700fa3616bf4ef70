"""Block reads one step ahead, into pinned host buffers: the reading side of the CUDA path (`--device cuda`).

`block_reads(job, base, readers)` yields, for the blocks of a cheap job in order, the same
`(start, count, raw0, {run: raw})` that a plain read loop gives (`scan.jobs.cheap.run_job`), but a background thread reads
block k+1 while the caller computes block k on the device. Two buffer slots alternate: block k lives in slot
k % 2 until the caller asks for block k+1; then slot k % 2 is refilled with block k+2 once the device work queued
on block k is done (a CUDA event recorded when the caller moves on, so the next read never overwrites bytes a
non-blocking host-to-device copy is still reading, and never waits for block k+1's work).

On CUDA the slots are page-locked (`pin_memory`), so `tensor.to("cuda", non_blocking=True)` is a DMA transfer.
On the CPU (`device="cpu"`, how CI tests this module) the slots are ordinary memory and no event is recorded:
the same code, the same bytes. Numbers never depend on the prefetch: a block's bytes are the bytes the plain
loop reads. Memory: 2 slots x block x (base + runs) itemsizes, e.g. 2 x 16M elements x 2 bytes x 4 checkpoints
= 256 MiB of pinned memory with the CUDA block (`plan.CUDA_MIN_BLOCK`).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import torch

SLOTS = 2


def wanted(job) -> bool:
    """Whether `scan.jobs.cheap.run_job` reads this job's blocks through `block_reads` (the CUDA path)."""
    return torch.device(job.device).type == "cuda"


class _Slots:
    """Host buffers by (slot, key), pinned on CUDA, reused across blocks; numpy views for the readers."""

    def __init__(self, device: torch.device):
        self.pin = device.type == "cuda"
        self.store: dict = {}

    def get(self, slot: int, key, nbytes: int) -> np.ndarray:
        buf = self.store.get((slot, key))
        if buf is None or buf.numel() < nbytes:
            buf = torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.pin)
            self.store[(slot, key)] = buf
        return buf.numpy()


def block_reads(job, base, readers: dict) -> Iterator[tuple[int, int, np.ndarray, dict[str, np.ndarray]]]:
    """(start, count, base raw, {run: raw}) for each block of `job`, the next one read ahead in a thread."""
    t = job.tensor
    size = {s.run: s.loc.itemsize for s in t.sides}
    device = torch.device(job.device)
    slots = _Slots(device)
    events: list = [None] * SLOTS
    end = job.start + job.count
    starts = list(range(job.start, end, job.block))

    def read(k: int):
        slot = k % SLOTS
        if events[slot] is not None:
            events[slot].synchronize()  # device work on the block that used this slot is done
        start = starts[k]
        cnt = min(job.block, end - start)
        raw0 = base.read(start, cnt, slots.get(slot, "base", cnt * t.base.itemsize))
        raws = {r: rd.read(start, cnt, slots.get(slot, ("run", r), cnt * size[r])) for r, rd in readers.items()}
        return start, cnt, raw0, raws

    if not starts:
        return
    with ThreadPoolExecutor(1, thread_name_prefix="updelta-prefetch") as pool:
        ahead = pool.submit(read, 0)
        for k in range(len(starts)):
            got = ahead.result()
            if k > 0 and device.type == "cuda":  # the caller is done queueing work on block k - 1
                ev = torch.cuda.Event()
                ev.record(torch.cuda.current_stream(device))
                events[(k - 1) % SLOTS] = ev
            if k + 1 < len(starts):
                ahead = pool.submit(read, k + 1)  # slot (k + 1) % 2: block k - 1's, released above
            yield got
