"""Geometry while training, for the `transformers` Trainer (and TRL's trainers, which are Trainers).

    from updelta.integrations.transformers import track
    trainer = Trainer(model=model, args=args, train_dataset=ds)
    track(trainer, every_n_steps=50)             # adds the callback and returns it
    trainer.train()                              # log_history / TensorBoard / W&B get updelta/* every 50 steps

Every N optimizer steps (and at the end of training) the callback measures the update of the trained weights
against the starting ones (`integrations.tracker.Tracker`: the definitions and kernels of `updelta diff`,
docs/metrics.md) and logs through `trainer.log`, so every reporting integration and `trainer.state.log_history`
get the values:

- `updelta/rel_delta`, `updelta/delta_fro`, `updelta/cos_delta_base`, `updelta/sparsity_exact`,
  `updelta/sparsity_atol`, `updelta/sparsity_rtol`: the whole model;
- `updelta/{component}/{metric}`: the same per component (embed, attn, mlp, norm, head, ...);
- with `spectral="fast"`: `updelta/{component}/stable_rank`, the median over the component's 2-D tensors.

A callback is not handed the trainer, and `Trainer.log` reaches the reporting callbacks before any user callback's
`on_log`; so the callback keeps the trainer it was attached to and calls `trainer.log` itself.

Distributed runs: with DDP (and DeepSpeed ZeRO-1/2) every rank holds the same weights and only the main process
keeps a copy and measures; with FSDP or DeepSpeed ZeRO-3 every rank measures its shard and the sums are all-reduced
(spectral figures are refused there). PEFT models: the update is the adapter's (see `integrations.tracker`).
"""
from __future__ import annotations

import os
from typing import Iterable

from transformers import TrainerCallback

from updelta.errors import UpdeltaError
from updelta.integrations.tracker import Measurement, Tracker, TrackOptions, check_spectral


def sharding_of(trainer) -> str | None:
    """How the trainer shards parameters: "FSDP", "DeepSpeed ZeRO-3", or None (whole parameters on every rank)."""
    if getattr(trainer, "is_fsdp_enabled", False):
        return "FSDP"
    if getattr(trainer, "is_deepspeed_enabled", False):
        plugin = getattr(getattr(getattr(trainer, "accelerator", None), "state", None), "deepspeed_plugin", None)
        if getattr(plugin, "zero_stage", None) == 3:
            return "DeepSpeed ZeRO-3"
    return None


class UpdeltaCallback(TrainerCallback):
    """Measures the update every `options.every_n_steps` optimizer steps and at the end, logging via `trainer.log`.

    `measurements` keeps what this process measured (step, `Result`, logged values) for use after training."""

    def __init__(self, trainer, options: TrackOptions, *, base=None, out=None):
        self.trainer = trainer
        self.options = options
        self.base, self.out = base, out
        self.sharding = sharding_of(trainer)
        check_spectral(options.spectral, self.sharding)
        self.tracker: Tracker | None = None
        self.measurements: list[Measurement] = []

    def on_train_begin(self, args, state, control, **kwargs):
        main = bool(state.is_world_process_zero)
        if self.sharding is None and not main:
            return  # DDP: the main process measures for every rank
        self.tracker = Tracker(self.trainer.model, self.options, base=self.base, out=self.out if main else None,
                               main=main, shards=self.sharding)
        self.tracker.begin(int(state.global_step))

    def on_step_end(self, args, state, control, **kwargs):
        if self.tracker is not None and self.tracker.due(int(state.global_step)):
            # `Trainer.log` clears `control.should_log` (through the callback handler's on_log): keep the trainer's
            # own logging of this step, whose loss gather is a collective every rank must join
            keep = control.should_log
            self._measure(int(state.global_step))
            control.should_log = keep
            self.trainer.control.should_log = keep
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self.tracker is None:
            return
        step = int(state.global_step)
        if step > 0 and self.tracker.last_step != step:
            self._measure(step)
        self.tracker.close()

    def _measure(self, step: int) -> None:
        m = self.tracker.measure(step)
        self.measurements.append(m)
        if self.tracker.main and m.logs:
            self.trainer.log(dict(m.logs))


def track(trainer, every_n_steps: int = TrackOptions.every_n_steps, spectral: str = TrackOptions.spectral,
          include: str | Iterable[str] = TrackOptions.include, out: str | os.PathLike | None = None,
          base: str | os.PathLike | None = None, *, exclude: str | Iterable[str] = TrackOptions.exclude,
          keep_on: str = TrackOptions.keep_on, save_dtype: str = TrackOptions.save_dtype, atol: float = TrackOptions.atol,
          eta: float = TrackOptions.eta) -> UpdeltaCallback:
    """Add an `UpdeltaCallback` to `trainer` and return it.

    every_n_steps: measure every N optimizer steps (and at the end); spectral: "off" or "fast"; include / exclude:
    regular expressions on parameter names; out: a folder to append per-step rows to (`out/trajectory.parquet`, the
    table of `updelta trajectory`, consecutive-update columns null); base: a checkpoint to read the starting weights
    from instead of copying them; keep_on: "cpu" or "device" for the copy; save_dtype: the dtype checkpoints are
    saved in ("auto": each parameter's dtype, what `Trainer.save_model` writes), where sparsity is counted; atol,
    eta: the sparsity tolerances of `updelta diff`. Bad values raise `UpdeltaError` (before training starts)."""
    if not hasattr(trainer, "add_callback") or not hasattr(trainer, "log"):
        raise UpdeltaError(f"track(): expected a transformers Trainer, got {type(trainer).__name__}")
    opts = TrackOptions(every_n_steps=every_n_steps, spectral=spectral,
                        include=(include,) if isinstance(include, str) else tuple(include),
                        exclude=(exclude,) if isinstance(exclude, str) else tuple(exclude),
                        keep_on=keep_on, save_dtype=save_dtype, atol=atol, eta=eta)
    cb = UpdeltaCallback(trainer, opts, base=base, out=out)
    trainer.add_callback(cb)
    return cb
