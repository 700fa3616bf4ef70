"""Pretraining the small base: next-token cross-entropy on whole documents of the pretraining mixture.

    updelta train pretrain --out base/ --seed 0

The mixture (see `tasks.pretrain_stream`) teaches the written-out addition procedure on 1-2 digit numbers (3-digit
ones rarely) and facts about a fixed set of entities, so the base starts every fine-tuning run with a prior: partial
competence on the target task, none on the new-entity knowledge task. The committed base in `updelta/assets/base/`
was made by this command; its README says with which seed.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from updelta.train.model import new_model
from updelta.train.options import SaveDtype, check_choice, option, resolve
from updelta.train.runs import RunResult, RunWriter, run_folder
from updelta.train.sft import objective as cross_entropy
from updelta.train.supervised import train_supervised
from updelta.train.tasks import pretrain_stream


@dataclass(frozen=True, kw_only=True)
class PretrainOptions:
    out: Path = option("folder to write the base model to")
    seed: int = option("seed of the initialisation and of the pretraining stream", 0)
    quick: bool = option("small preset for tests and CI (runs in seconds)", False)
    steps: int | None = option("optimizer steps", 2000, quick=20)
    batch_size: int = option("documents per optimizer step", 48)
    lr: float = option("peak learning rate (AdamW betas 0.9/0.95, 10% warm-up, cosine, grad clip 1.0)", 3e-3)
    weight_decay: float = option("AdamW decoupled weight decay on matrices", 0.1)
    save_every: int = option("also save checkpoint-STEP/ every N steps (0: only the final checkpoint)", 0)
    save_dtype: SaveDtype = option("dtype of the saved model: bfloat16 or float32", "bfloat16")
    eval_items: int | None = option("evaluation items per split", 200, quick=24)
    log_every: int = option("log one train_log.jsonl line every N steps", 25)

    def __post_init__(self) -> None:
        check_choice("save dtype", self.save_dtype, ("bfloat16", "float32"))


def pretrain(options: PretrainOptions) -> RunResult:
    """Pretrain a fresh small Llama on the synthetic mixture and write it, with its log and eval.json."""
    options = resolve(options)
    model, tokenizer = new_model(options.seed)
    stream = pretrain_stream(options.seed)
    batches = (list(itertools.islice(stream, options.batch_size)) for _ in itertools.count())

    def run(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, writer: RunWriter) -> None:
        train_supervised(model, tokenizer, batches, cross_entropy(), steps=options.steps, grad_accum=1,
                         lr=options.lr, weight_decay=options.weight_decay, on_step=writer.step, prompt_loss=True)

    return run_folder(Path(options.out), model, tokenizer, run, method="pretrain", task="mixture", base=None,
                      options=options, steps=options.steps, log_every=options.log_every)
