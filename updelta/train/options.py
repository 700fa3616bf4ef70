"""Options: one frozen dataclass per command, shared by the Python API and the CLI.

Each field is declared with `option(help, default, quick=...)`, so its help text and defaults live in one place: the
CLI builds its flags from the fields (see `cli.py`), and `eval.json` records the resolved values. A field given a
`quick` value is a budget knob: left at None it takes `default`, or `quick` under `--quick` (the preset for tests
and CI); `resolve(options)` fills it in. Bad values raise `OptionsError`, which the CLI prints as one line (exit 2).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

T = TypeVar("T")
SaveDtype = Literal["bfloat16", "float32"]


class OptionsError(ValueError):
    """Bad user input (a missing folder, an unknown choice): the CLI prints it as one line and exits with code 2."""


def option(help: str, default: Any = dataclasses.MISSING, *, quick: Any = None) -> Any:
    """A dataclass field carrying its help text; with `quick`, a budget knob resolved by `resolve`."""
    if quick is None:
        return field(default=default, metadata={"help": help})
    return field(default=None, metadata={"help": f"{help} (default {default}; with --quick {quick})",
                                         "preset": default, "quick": quick})


def resolve(options: T) -> T:
    """`options` with every budget knob left at None set from its default or, under --quick, its quick preset."""
    quick = getattr(options, "quick", False)
    filled = {f.name: f.metadata["quick" if quick else "preset"] for f in fields(options)
              if "preset" in f.metadata and getattr(options, f.name) is None}
    return dataclasses.replace(options, **filled)


def as_record(options: Any) -> dict[str, Any]:
    """A JSON-ready dict of the options (paths as strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(options).items()}


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise OptionsError(f"unknown {name} {value!r} (choose from {', '.join(map(str, choices))})")


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """What every fine-tuning command shares: where from, where to, what task, and what a run records."""
    out: Path = option("run folder to write (checkpoint, train_log.jsonl, eval.json)")
    base: Path | None = option("base model folder (any local HF causal LM); default: the committed base", None)
    task: Literal["target", "knowledge"] = option("fine-tuning task: target or knowledge", "target")
    seed: int = option("seed of the run: data order, sampling, noise (same seed, same checkpoint)", 0)
    quick: bool = option("small preset for tests and CI (runs in seconds)", False)
    save_every: int = option("also save checkpoint-STEP/ every N steps (0: only the final checkpoint)", 0)
    save_dtype: SaveDtype = option("dtype of saved checkpoints: bfloat16 (as released models) or float32",
                                   "bfloat16")
    eval_items: int | None = option("evaluation items per split", 200, quick=24)
    track_every: int = option("measure the update against the start every N steps and at the end (updelta/* in "
                              "train_log.jsonl, rows in trajectory.parquet; 0: off)", 0)

    def __post_init__(self) -> None:
        check_choice("task", self.task, ("target", "knowledge"))
        if self.track_every < 0:
            raise OptionsError("need --track-every >= 0")
        check_choice("save dtype", self.save_dtype, ("bfloat16", "float32"))
        if self.save_every < 0 or (self.eval_items is not None and self.eval_items < 1):
            raise OptionsError("need --save-every >= 0 and --eval-items >= 1")
