"""Shared fixtures of the integration tests: one tracked `transformers.Trainer` run on a tiny Llama (session)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from integ_models import STEPS, tiny_llama, token_data  # noqa: E402,F401


@dataclass
class TrackedRun:
    start: Path  # the weights training started from (save_pretrained before training)
    out: Path  # the trainer's output_dir (checkpoint-2, checkpoint-4)
    traj: Path  # the callback's out= folder
    log_history: list[dict]
    callback: object


@pytest.fixture(scope="session")
def tracked_run(tmp_path_factory) -> TrackedRun:
    """4 optimizer steps of a real Trainer with the embedding frozen, tracked every 2 steps with spectral fast and
    out=, saving checkpoint-2 and checkpoint-4."""
    from transformers import Trainer, TrainingArguments

    from updelta.integrations.transformers import track

    tmp = tmp_path_factory.mktemp("tracked")
    model = tiny_llama()
    model.model.embed_tokens.weight.requires_grad_(False)
    model.save_pretrained(tmp / "start")
    args = TrainingArguments(output_dir=str(tmp / "out"), max_steps=max(STEPS), per_device_train_batch_size=4,
                             learning_rate=1e-2, save_steps=STEPS[0], save_only_model=True, logging_steps=1,
                             report_to=[], use_cpu=True, disable_tqdm=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=token_data())
    cb = track(trainer, every_n_steps=STEPS[0], spectral="fast", out=tmp / "traj")
    trainer.train()
    return TrackedRun(tmp / "start", tmp / "out", tmp / "traj", list(trainer.state.log_history), cb)
