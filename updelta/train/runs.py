"""Run folders: what every training command writes, and the scaffold every fine-tuning method runs in.

    runs/NAME/
      config.json, model.safetensors, tokenizer.json, ...   the final checkpoint (save dtype)
      checkpoint-STEP/                                      with --save-every N: the checkpoint after step STEP
      train_log.jsonl                                       one object per logged step: step, loss, lr, grad_norm,
                                                            tokens_per_s, plus the method's own metrics
      trajectory.parquet                                    with --track-every N: the update against the start every
                                                            N steps (updelta.integrations; also updelta/* in the log)
      eval.json                                             method, task, seed, save_dtype, weight_decay, base,
                                                            base_fingerprint (of the folder the run started
                                                            from), preset (toy|real), start (base, or the method
                                                            of the run folder it started from), suite, no_update,
                                                            no_signal (RL), before/after accuracies per split
                                                            (fractions in [0, 1]), eval_items, budget,
                                                            forgetting (KL to the start on the run's own task,
                                                            and by_split on both tasks), options,
                                                            seconds, cpu_seconds, torch_threads

The folder is built under a temporary name beside `out` and renamed into place when the run succeeds, so a failed run
leaves nothing half-written and a finished one replaces an earlier run of the same name. Before any training step,
`preflight` saves the model once into a scratch folder beside `out`: a run that could not write its result fails in
one line before it trains, not after. An interrupted run (Ctrl-C) keeps the `checkpoint-STEP/` folders it finished in
`NAME.interrupted/` (with its log so far and an INTERRUPTED note, never an eval.json, so nothing mistakes it for a
finished run).
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from updelta.atomic import atomic_dir, write_text
from updelta.io import open_checkpoint
from updelta.scan.progress import Progress
from updelta.train.bases import resolve_base, start_of
from updelta.train.checks import bit_identical, no_signal, update_budget
from updelta.train.evalcache import cached
from updelta.train.evaluate import evaluate_model, judge
from updelta.train.forgetting import forward_kl, greedy_answers
from updelta.train.model import bound_heap, load_model, load_weights, release_memory, save_checkpoint
from updelta.train.options import OptionsError, RunOptions, as_record, resolve
from updelta.train.suites import Suite, build_suite, filter_retention, profile
from updelta.train.tasks import Example


@dataclass(frozen=True)
class RunResult:
    out: Path
    before: dict[str, float]
    after: dict[str, float]
    seconds: float
    warnings: dict[str, bool] = field(default_factory=dict)  # the no-op checks that fired (checks.py)


def check_out(out: Path) -> None:
    """Refuse to replace a non-empty folder that is not a previous output (no eval.json, no config.json)."""
    if out.exists() and not out.is_dir():
        raise OptionsError(f"--out exists and is not a folder: {out}")
    if out.is_dir() and any(out.iterdir()) and not ((out / "eval.json").exists() or (out / "config.json").exists()):
        raise OptionsError(f"refusing to replace {out}: not empty and not a run folder")


INTERRUPTED = "INTERRUPTED"


def preflight(out: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, save_dtype: str,
              base: Path | None) -> None:
    """Check that the run can write its result: `out`'s folder is writable and `model` saves in `save_dtype`.

    Raises OptionsError (one line) naming the problem; writes nothing that outlives the call."""
    where = f"base {base}" if base is not None else "the base"
    quant = getattr(model.config, "quantization_config", None)
    if quant is not None:
        method = quant.get("quant_method", "unnamed") if isinstance(quant, dict) else getattr(
            quant, "quant_method", "unnamed")
        method = getattr(method, "value", method)  # transformers' QuantizationMethod enum
        raise OptionsError(f"{where}: config.json carries a quantization_config ({method}); updelta train saves "
                           f"full-precision weights: use a de-quantized folder (drop quantization_config from "
                           f"config.json after converting the weights)")
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.preflight.", dir=parent))
    except OSError as e:
        raise OptionsError(f"--out {out}: cannot write in {parent} ({e.strerror})") from None
    try:
        save_checkpoint(model, tokenizer, scratch, save_dtype)
    except OptionsError:
        raise
    except Exception as e:  # whatever transformers raises for a model it cannot serialise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise OptionsError(f"{where}: the model cannot be saved as a {save_dtype} checkpoint before training "
                           f"({type(e).__name__}: {first}); fix the base folder or pick another --save-dtype") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def keep_interrupted(tmp: Path, out: Path, records: list[dict[str, Any]], done: list[str]) -> Path | None:
    """After Ctrl-C: move the finished checkpoint-STEP/ folders (`done`) of `tmp` to OUT.interrupted/ (replacing an
    older one) with the log so far and an INTERRUPTED note; a checkpoint being written is dropped. Returns that folder,
    or None when no checkpoint had finished."""
    if not done:
        return None
    for p in tmp.iterdir():
        if p.name not in done:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    (tmp / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp / INTERRUPTED).write_text(f"interrupted after {done[-1]}; finished checkpoints: {', '.join(done)}\n")
    dest = out.with_name(out.name + ".interrupted")
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


class RunWriter:
    """Collects one run's log records and writes its intermediate checkpoints inside the (temporary) run folder."""

    def __init__(self, folder: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *,
                 save_dtype: str, save_every: int, total_steps: int, desc: str, log_every: int = 1,
                 track_every: int = 0):
        self.folder, self.model, self.tokenizer = folder, model, tokenizer
        self.save_dtype, self.save_every, self.log_every = save_dtype, save_every, log_every
        self.total_steps = total_steps
        self.records: list[dict[str, Any]] = []
        self.saved: list[str] = []  # checkpoint-STEP folders written completely
        self.bar = Progress(total=total_steps, desc=desc, unit="step")
        from updelta.integrations.loop import loop_tracker  # --track-every: updelta/* values, trajectory.parquet
        self.tracker = loop_tracker(model, track_every, folder, save_dtype)

    def step(self, step: int, record: dict[str, Any]) -> None:
        """Log `record` (every log_every steps, the first, the last and tracked ones) and save checkpoint-STEP when it
        is due."""
        tracked = self.tracker.step(step, last=step == self.total_steps) if self.tracker is not None else {}
        record = {**record, **tracked}
        if step == 1 or step % self.log_every == 0 or step == self.total_steps or tracked:
            self.records.append(record)
        if self.save_every and step % self.save_every == 0:
            save_checkpoint(self.model, self.tokenizer, self.folder / f"checkpoint-{step}", self.save_dtype)
            self.saved.append(f"checkpoint-{step}")
        shown = "loss" if "loss" in record else "reward_mean"
        self.bar.update(1, postfix=f"{shown} {record[shown]:.4f}")

    def finish(self) -> None:
        """Save the final checkpoint and train_log.jsonl."""
        self.bar.close()
        save_checkpoint(self.model, self.tokenizer, self.folder, self.save_dtype)
        write_text(self.folder / "train_log.jsonl", "".join(json.dumps(r) + "\n" for r in self.records))


Train = Callable[[PreTrainedModel, PreTrainedTokenizerBase, RunWriter], None]


@dataclass(frozen=True)
class Setup:
    """What a fine-tuning method gets beside the model: its resolved options, the suite and its training set."""
    options: Any
    suite: Suite
    examples: list[Example]
    profile: str


FineTune = Callable[[PreTrainedModel, PreTrainedTokenizerBase, RunWriter, Setup], None]


def prepare_suite(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, suite: Suite, base: Path | None,
                  limit: int | None) -> Suite:
    """Narrow a real base's retention pool to the items the start model answers right (`suites.filter_retention`),
    cached per start folder content in the updelta cache (`evalcache.py`) since greedy decoding is deterministic."""
    if suite.name == "toy":
        return suite
    pool = suite.evals["retention"]
    payload = {"suite": suite.name, "limit": limit, "margin": suite.margin_tokens, "pool": [x.prompt for x in pool]}

    def compute() -> list[str]:
        out = filter_retention(suite, lambda xs: judge(model, tokenizer, xs, suite.correct, suite.margin_tokens),
                               limit)
        return [x.prompt for x in out.evals["retention"]]

    kept = set(cached("retention", base, payload, compute))
    items = tuple(x for x in pool if x.prompt in kept)
    return replace(suite, evals={**suite.evals, "retention": items}, retention_filtered=True,
                   notes={**suite.notes, "retention_pool": len(pool), "retention_kept": len(items)})


def evaluate_start(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, suite: Suite, base: Path | None,
                   limit: int | None) -> dict[str, float]:
    """The start model's accuracies (`evaluate_model`); on a real base cached per start folder and items."""
    if suite.name == "toy":
        return evaluate_model(model, tokenizer, limit, suite)
    payload = {"suite": suite.name, "margin": suite.margin_tokens, "decoding": "splits batched together",
               "items": {s: [[x.prompt, x.answer] for x in suite.eval_items(s, limit)] for s in suite.evals}}
    return cached("before", base, payload, lambda: evaluate_model(model, tokenizer, limit, suite))


def fingerprint(folder: Path) -> str:
    """`Checkpoint.identity()["fingerprint"]` of the folder a run started from (eval.json `base_fingerprint`: what
    the report checks a run's base against)."""

    return open_checkpoint(folder).identity()["fingerprint"]


KL_SPLIT = {"target": "target_id", "knowledge": "knowledge"}  # the prompts of the task a run learns (RL's Razor)


def measure_forgetting(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, suite: Suite, base: Path,
                       limit: int | None, task: str = "target") -> dict[str, Any]:
    """E_x KL(pi_0 || pi) per token (`forgetting.py`) on the prompts of the task the run learns (`KL_SPLIT`: the
    target_id prompts for a target run, the knowledge prompts for a knowledge run, as Shenfeld et al. measure it,
    docs/claims.md) in `kl_per_token`, with `split` naming them; `by_split` holds the KL on both tasks' prompts (the
    other one for reference). The start model (float32) is loaded from `base`, its greedy answers cached per start
    folder and split (`evalcache.py`)."""
    start_model, _ = load_model(base)
    own = KL_SPLIT.get(task, "target_id")
    by_split = {}
    for split in [own] + [s for s in KL_SPLIT.values() if s != own and s in suite.evals]:
        items = suite.eval_items(split, limit)
        prompts = [x.prompt for x in items]
        longest = max(len(tokenizer(x.completion, add_special_tokens=False)["input_ids"]) for x in items)
        budget = longest + suite.margin_tokens
        answers = cached("start-answers", base if suite.name != "toy" else None,
                         {"prompts": prompts, "max_new_tokens": budget},
                         lambda m=start_model, p=prompts, b=budget: greedy_answers(m, tokenizer, p, b))
        by_split[split] = forward_kl(start_model, model, tokenizer, prompts, answers=answers)
    del start_model
    release_memory()
    return {**by_split[own], "split": own,
            "on": f"{own} prompts (the run's own task), teacher-forced on the start model's greedy answers",
            "by_split": by_split}


def run_folder(out: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, train: Train, *,
               method: str, task: str, base: Path | None, options: Any, steps: int, log_every: int = 1,
               suite: Suite | None = None, extra: dict[str, Any] | None = None,
               budget: tuple[int, float] | None = None) -> RunResult:
    """Evaluate `model`, run `train(model, tokenizer, writer)`, save, evaluate the saved checkpoint, and write the
    run folder `out` (atomically). `options` is the resolved options dataclass of the command: its seed, eval_items,
    save_dtype, save_every and weight_decay fields are used, and all of it is recorded in eval.json, with `extra`.
    With a `base`, the run is checked against it (`checks.py`: no_update, no_signal, and with `budget` = (optimizer
    steps, peak lr) the update budget)."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    check_out(out)
    preflight(out, model, tokenizer, options.save_dtype, base)
    release_memory()
    torch.manual_seed(options.seed)
    suite = prepare_suite(model, tokenizer, suite or build_suite(tokenizer), base, options.eval_items)
    before = evaluate_start(model, tokenizer, suite, base, options.eval_items)
    release_memory()
    with atomic_dir(out) as tmp:
        writer = RunWriter(tmp, model, tokenizer, save_dtype=options.save_dtype, save_every=options.save_every,
                           total_steps=steps, desc=f"{method} {task}", log_every=log_every,
                           track_every=getattr(options, "track_every", 0))
        try:
            train(model, tokenizer, writer)
        except KeyboardInterrupt:
            writer.bar.close()
            keep_interrupted(tmp, out, writer.records, writer.saved)
            raise
        writer.finish()
        flags: dict[str, Any] = {}
        if base is not None:
            flags["no_update"] = bit_identical(base, tmp)
            signal = no_signal(writer.records)
            if signal is not None:
                flags["no_signal"] = signal
        record_budget = update_budget(model, base, *budget) if base is not None and budget else None
        # The saved checkpoint is evaluated: its weights are loaded into the training model (now free of optimizer
        # state and gradients), so at most two models are held from here on: it and the start.
        after_model = load_weights(model, tmp)
        release_memory()
        after = evaluate_model(after_model, tokenizer, options.eval_items, suite)
        forgetting = measure_forgetting(after_model, tokenizer, suite, base, options.eval_items, task) \
            if base is not None else None
        seconds = time.perf_counter() - t0
        record = {
            "method": method, "task": task, "seed": options.seed, "save_dtype": options.save_dtype,
            "weight_decay": options.weight_decay, "base": None if base is None else str(base.resolve()),
            "base_fingerprint": None if base is None else fingerprint(base),
            **(extra or {}), "suite": suite.name, **flags, "before": before, "after": after,
            "eval_items": {s: len(suite.eval_items(s, options.eval_items)) for s in before},
            **({"suite_notes": suite.notes} if suite.notes else {}),
            **({"budget": record_budget} if record_budget else {}),
            **({"forgetting": forgetting} if forgetting else {}),
            "options": as_record(options),
            "seconds": round(seconds, 2), "cpu_seconds": round(time.process_time() - cpu0, 2),
            "torch_threads": torch.get_num_threads()}
        write_text(tmp / "eval.json", json.dumps(record, indent=2) + "\n")
    return RunResult(out, before, after, seconds, {k: v for k, v in flags.items() if v})


def steps_of(options: Any) -> int:
    """The progress-bar steps of a resolved options object: rollout batches, optimizer steps or ES iterations."""
    return int(getattr(options, "steps", None) or getattr(options, "iterations"))


def finetune(method: str, options: RunOptions, train: FineTune, *, budget=None) -> RunResult:
    """Load the base (`bases.resolve_base(options.base)`), resolve the options' presets for it (toy or real),
    build its suite (with --data), and fine-tune it in a run folder (see `run_folder`). `budget(options)` gives
    (optimizer steps, peak lr) for eval.json's update budget."""
    base = resolve_base(options.base)
    check_out(Path(options.out))
    model, tokenizer = load_model(base)
    prof = profile(tokenizer)
    if prof == "real":
        bound_heap()  # a real model only: the toy model's small tensors would only pay the extra page faults
    options = resolve(options, prof)
    suite = build_suite(tokenizer, options.data)
    examples = list(suite.train[options.task])
    setup = Setup(options, suite, examples, prof)
    extra = {"preset": prof, "start": start_of(base), **({"data": str(options.data)} if options.data else {})}
    return run_folder(Path(options.out), model, tokenizer, lambda m, t, w: train(m, t, w, setup), method=method,
                      task=options.task, base=base, options=options, steps=steps_of(options), suite=suite,
                      extra=extra, budget=budget(options) if budget else None)
