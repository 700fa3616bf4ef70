"""The embedded trainer: on one CPU, with no downloads, fine-tune one small base by different objectives so the
diff tools have real checkpoints to compare.

Command line (mounted as `updelta train`, see `cli.py`):

    updelta train pretrain --out base/ [--seed 0] [--quick]
    updelta train sft|dft|grpo|es [--base toy|smollm2|DIR] --task target|knowledge --out runs/NAME [--seed S]
                                  [--quick] [--data FILE.jsonl] [--save-every N] [--save-dtype bfloat16|float32]
                                  [method options]

The base decides the presets and the tasks (`suites.py`: the toy suite on the committed char-level base, the
chat suite of `chat_tasks.py` on a real model); `--data` replaces the target task by the user's records
(`data.py`). Every run is checked for no-ops (`checks.py`: no_update, no_signal, the update budget).

Python API:

    from updelta.train import SFTOptions, run_method, evaluate
    result = run_method("sft", SFTOptions(out=Path("runs/sft-0"), task="target", seed=0))   # -> RunResult
    result.out, result.before, result.after, result.seconds
    evaluate("runs/sft-0")       # {"target_id": .., "target_ood": .., "knowledge": .., "retention": ..}

- `METHODS`: {"sft", "dft", "grpo", "es"} -> Method(options=<options class>, train=<options -> RunResult>).
- `run_method(method, options) -> RunResult`; the same as `METHODS[method].train(options)`.
- Options classes (frozen dataclasses; their fields are the CLI flags, with help in the field metadata):
  `SFTOptions`, `DFTOptions` (+ prob_floor, weighting, anchor_weight for ASFT), `GRPOOptions`, `ESOptions`,
  `PretrainOptions`. Shared fields (`RunOptions`): out, base (None or "toy" = the committed base, "smollm2",
  or a folder), data, task, seed, quick, save_every, save_dtype, eval_items; every method also has weight_decay.
- `pretrain(PretrainOptions) -> RunResult` makes a base; `default_base_path()` is the committed one.
- `evaluate(model_dir, limit=None) -> dict[str, float]`: exact-match accuracy (greedy, batched) per split.
- `OptionsError`: bad input (missing folder, unknown choice); the CLI turns it into a one-line error, exit code 2.
- Losses are pure functions in `updelta.train.losses` (sft_loss, dft_loss, asft_loss, GRPO's pieces).

A run folder holds the final checkpoint (loadable with `AutoModelForCausalLM` / `AutoTokenizer`), optional
`checkpoint-STEP/` folders, `train_log.jsonl` and `eval.json` (method, task, seed, save_dtype, weight_decay, base,
preset, start, no_update, no_signal, budget, before/after accuracies as fractions in [0, 1]); see `runs.py`. The same seed gives the same checkpoint on the same
machine (with the same number of torch threads).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from updelta.train import dft, es, grpo, sft
from updelta.train.dft import DFTOptions
from updelta.train.es import ESOptions
from updelta.train.evaluate import evaluate
from updelta.train.grpo import GRPOOptions
from updelta.train.model import default_base_path
from updelta.train.options import OptionsError
from updelta.train.pretrain import PretrainOptions, pretrain
from updelta.train.runs import RunResult
from updelta.train.sft import SFTOptions


@dataclass(frozen=True)
class Method:
    options: type
    train: Callable[[Any], RunResult]


METHODS: dict[str, Method] = {
    "sft": Method(SFTOptions, sft.train),
    "dft": Method(DFTOptions, dft.train),
    "grpo": Method(GRPOOptions, grpo.train),
    "es": Method(ESOptions, es.train),
}


def run_method(method: str, options: Any) -> RunResult:
    """Train one fine-tuning run of `method` ("sft", "dft", "grpo" or "es") with that method's options."""
    if method not in METHODS:
        raise OptionsError(f"unknown method {method!r} (choose from {', '.join(METHODS)})")
    if not isinstance(options, METHODS[method].options):
        raise OptionsError(f"{method} needs {METHODS[method].options.__name__}, got {type(options).__name__}")
    return METHODS[method].train(options)


__all__ = ["METHODS", "Method", "run_method", "evaluate", "pretrain", "default_base_path", "OptionsError",
           "RunResult", "SFTOptions", "DFTOptions", "GRPOOptions", "ESOptions", "PretrainOptions"]
