"""Overhead of tracking while training: `transformers.Trainer` step time with and without
`updelta.integrations.transformers.track(every_n_steps=50)`, in one run.

Models: the embedded base (`updelta/assets/base`, 0.87M parameters) and SmolLM2-135M-Instruct
(`updelta.models.smollm2.smollm2_path()`, cached under ~/.cache/updelta/models), trained in float32 on
random tokens (all parameters trainable). For each model the untracked and the tracked run alternate
(`--rounds` times each, same seeds), so both see the same machine load; printed: seconds per step of
each, their ratio, the seconds of one measurement and the same overhead computed from it
(measurement seconds / (every_n_steps x untracked step seconds)), and the peak extra memory (the copy
of the starting weights).

    python benchmarks/bench_callback.py [--steps 100] [--rounds 2] [--skip-smollm2] [--device cpu|cuda]

On a loaded machine the step times of separate runs drift by more than the overhead; the measurement's own
seconds against 50 untracked steps is the robust figure (`--steps 4 --every 2` gives it quickly).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

os.environ.setdefault("UPDELTA_PROGRESS", "0")


class StepClock:
    """Wall time from the first optimizer step's end to the last one's (measurements included)."""

    def __init__(self):
        from transformers import TrainerCallback

        clock = self

        class CB(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if args.device.type == "cuda":
                    torch.cuda.synchronize()
                clock.t.append(time.perf_counter())

        self.t: list[float] = []
        self.callback = CB()

    def per_step(self) -> float:
        return (self.t[-1] - self.t[0]) / (len(self.t) - 1)


def run(path: str, steps: int, seq: int, batch: int, every: int | None, device: str) -> tuple[float, float]:
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from updelta.integrations.transformers import track

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": (ids := torch.randint(0, vocab, (seq,), generator=g)), "labels": ids.clone()}
            for _ in range(steps * batch)]
    args = TrainingArguments(output_dir="/tmp/updelta-bench-callback", max_steps=steps,
                             per_device_train_batch_size=batch, learning_rate=1e-4, save_strategy="no",
                             logging_steps=10 ** 6, report_to=[], use_cpu=device == "cpu", disable_tqdm=True,
                             seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=data)
    cb = track(trainer, every_n_steps=every) if every else None
    clock = StepClock()
    trainer.add_callback(clock.callback)  # after the tracker: a measurement counts in its step's time
    trainer.train()
    measure = statistics.mean(m.seconds for m in cb.measurements) if cb and cb.measurements else 0.0
    return clock.per_step(), measure


def bench(name: str, path: str, a) -> None:
    plain, tracked, meas = [], [], []
    for _ in range(a.rounds):
        plain.append(run(path, a.steps, a.seq, a.batch, None, a.device)[0])
        s, m = run(path, a.steps, a.seq, a.batch, a.every, a.device)
        tracked.append(s)
        meas.append(m)
    p, t, m = statistics.median(plain), statistics.median(tracked), statistics.median(meas)
    print(f"{name:10s} steps {a.steps} x{a.rounds}  untracked {p * 1e3:8.2f} ms/step  tracked {t * 1e3:8.2f} ms/step  "
          f"ratio {t / p:6.3f}  one measurement {m * 1e3:8.1f} ms  = {100 * m / (50 * p):5.2f}% of 50 untracked "
          f"steps", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-smollm2", action="store_true")
    ap.add_argument("--smollm2-steps", type=int, default=None, help="steps for SmolLM2 (default --steps)")
    a = ap.parse_args()
    from updelta.train.model import default_base_path

    print(f"torch threads {torch.get_num_threads()}, device {a.device}, every_n_steps {a.every}")
    bench("embedded", str(default_base_path()), a)
    if not a.skip_smollm2:
        from updelta.models.smollm2 import smollm2_path

        if a.smollm2_steps:
            a.steps = a.smollm2_steps
        bench("smollm2", str(smollm2_path()), a)


if __name__ == "__main__":
    main()
