"""Run folders: what every training command writes, and the scaffold every fine-tuning method runs in.

    runs/NAME/
      config.json, model.safetensors, tokenizer.json, ...   the final checkpoint (save dtype)
      checkpoint-STEP/                                      with --save-every N: the checkpoint after step STEP
      train_log.jsonl                                       one object per logged step: step, loss, lr, grad_norm,
                                                            tokens_per_s, plus the method's own metrics
      trajectory.parquet                                    with --track-every N: the update against the start every
                                                            N steps (updelta.integrations; also updelta/* in the log)
      eval.json                                             method, task, seed, save_dtype, weight_decay, base,
                                                            base_fingerprint (what `report --eval` checks),
                                                            before/after accuracies per split (fractions in
                                                            [0, 1]), options, seconds, cpu_seconds, torch_threads

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..atomic import atomic_dir, write_text
from ..progress import Progress
from .evaluate import evaluate, evaluate_model
from .model import default_base_path, load_model, save_checkpoint
from .options import OptionsError, RunOptions, as_record


@dataclass(frozen=True)
class RunResult:
    out: Path
    before: dict[str, float]
    after: dict[str, float]
    seconds: float


def fingerprint(folder: Path) -> str:
    """`Checkpoint.identity()["fingerprint"]` of the folder a run started from (eval.json `base_fingerprint`: what
    the report checks a run's base against)."""
    from ..io import open_checkpoint

    return open_checkpoint(folder).identity()["fingerprint"]

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
        from ..integrations.loop import loop_tracker  # --track-every: updelta/* values, trajectory.parquet
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


def run_folder(out: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, train: Train, *,
               method: str, task: str, base: Path | None, options: Any, steps: int, log_every: int = 1) -> RunResult:
    """Evaluate `model`, run `train(model, tokenizer, writer)`, save, evaluate the saved checkpoint, and write the
    run folder `out` (atomically). `options` is the resolved options dataclass of the command: its seed, eval_items,
    save_dtype, save_every and weight_decay fields are used, and all of it is recorded in eval.json."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    check_out(out)
    preflight(out, model, tokenizer, options.save_dtype, base)
    torch.manual_seed(options.seed)
    before = evaluate_model(model, tokenizer, options.eval_items)
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
        after = evaluate(tmp, options.eval_items)
        seconds = time.perf_counter() - t0
        record = {
            "method": method, "task": task, "seed": options.seed, "save_dtype": options.save_dtype,
            "weight_decay": options.weight_decay, "base": None if base is None else str(base.resolve()),
            "base_fingerprint": None if base is None else fingerprint(base),
            "before": before, "after": after, "options": as_record(options),
            "seconds": round(seconds, 2), "cpu_seconds": round(time.process_time() - cpu0, 2),
            "torch_threads": torch.get_num_threads()}
        write_text(tmp / "eval.json", json.dumps(record, indent=2) + "\n")
    return RunResult(out, before, after, seconds)


def finetune(method: str, options: RunOptions, steps: int, train: Train) -> RunResult:
    """Load the base (options.base, or the committed one) and fine-tune it in a run folder (see `run_folder`)."""
    base = Path(options.base) if options.base is not None else default_base_path()
    check_out(Path(options.out))
    model, tokenizer = load_model(base)
    return run_folder(Path(options.out), model, tokenizer, train, method=method, task=options.task, base=base,
                      options=options, steps=steps)
