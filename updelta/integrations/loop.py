"""Tracking for a plain training loop (the embedded trainer's `updelta train ... --track-every N`).

    tracker = loop_tracker(model, every=10, out=run_folder, save_dtype="bfloat16")   # before the first step
    record.update(tracker.step(step, last=step == total))                           # after each optimizer step

`step` measures at every N-th step and at the last one (`integrations.tracker.Tracker`, the numbers of
`updelta diff`), returns the `updelta/*` values to log ({} on other steps) and appends the rows to
`out/trajectory.parquet`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from updelta.integrations.tracker import Tracker, TrackOptions


class LoopTracker:
    """A `Tracker` driven by step numbers (see the module docstring)."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    def step(self, step: int, last: bool = False) -> dict[str, float]:
        if not (self.tracker.due(step) or (last and self.tracker.last_step != step)):
            return {}
        logs = self.tracker.measure(step).logs
        if last:
            self.tracker.close()
        return logs


def loop_tracker(model: torch.nn.Module, every: int, out: str | Path | None = None, save_dtype: str = "auto",
                 **options) -> LoopTracker | None:
    """A started `LoopTracker` for `model` measuring every `every` steps (None when `every` is 0: no tracking)."""
    if not every:
        return None
    t = Tracker(model, TrackOptions(every_n_steps=every, save_dtype=save_dtype, **options), out=out)
    t.begin(0)
    return LoopTracker(t)
