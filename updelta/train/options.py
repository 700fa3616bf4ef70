"""Options: one frozen dataclass per command, shared by the Python API and the CLI.

Each field is declared with `option(help, default, quick=...)`, so its help text and defaults live in one place: the
CLI builds its flags from the fields (see `cli.py`), and `eval.json` records the resolved values. A field given a
`quick` or `real` value is a preset knob: left at None it takes `default`, or `quick` under `--quick` (the preset for
tests and CI); on a real pretrained base (any base but the committed toy one) it takes `real`, or `real_quick` under
`--quick` (each falling back to the toy value when not given). `resolve(options, profile)` fills them in and
eval.json records the profile ("toy" or "real"). Bad values raise `OptionsError`, which the CLI prints as one line
(exit 2).
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


def option(help: str, default: Any = dataclasses.MISSING, *, quick: Any = None, real: Any = None,
           real_quick: Any = None) -> Any:
    """A dataclass field carrying its help text; with `quick`/`real`/`real_quick`, a preset knob (`resolve`)."""
    if quick is None and real is None and real_quick is None:
        return field(default=default, metadata={"help": help})
    quick = default if quick is None else quick
    real_full = default if real is None else real
    real_quick = (quick if real is None else real) if real_quick is None else real_quick
    shown = f"default {default}" + (f"; with --quick {quick}" if quick != default else "")
    if (real_full, real_quick) != (default, quick):
        shown += f"; on a real base {real_full}" + (f", with --quick {real_quick}" if real_quick != real_full else "")
    return field(default=None, metadata={"help": f"{help} ({shown})", "preset": default, "quick": quick,
                                         "real": real_full, "real_quick": real_quick})


PROFILES: tuple[str, ...] = ("toy", "real")


def resolve(options: T, profile: str = "toy") -> T:
    """`options` with every preset knob left at None set from the preset of `profile` ("toy" or "real") and
    --quick; see the module docstring."""
    check_choice("preset profile", profile, PROFILES)
    quick = getattr(options, "quick", False)
    key = {("toy", False): "preset", ("toy", True): "quick", ("real", False): "real",
           ("real", True): "real_quick"}[(profile, bool(quick))]
    filled = {f.name: f.metadata[key] for f in fields(options)
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
    base: str | None = option("the base: toy (the committed base, default), smollm2 (SmolLM2-135M-Instruct, "
                              "fetched once into the updelta cache) or a local HF causal-LM folder", None)
    data: Path | None = option("your own JSONL training records (prompt+completion, prompt+answer or chat messages) "
                               "instead of the task's; a tenth is held out as target_id", None)
    task: Literal["target", "knowledge"] = option("fine-tuning task: target or knowledge", "target")
    seed: int = option("seed of the run: data order, sampling, noise (same seed, same checkpoint)", 0)
    quick: bool = option("small preset for tests and CI (runs in seconds)", False)
    save_every: int = option("also save checkpoint-STEP/ every N steps (0: only the final checkpoint)", 0)
    save_dtype: SaveDtype = option("dtype of saved checkpoints: bfloat16 (as released models) or float32",
                                   "bfloat16")
    eval_items: int | None = option("evaluation items per split", 200, quick=24, real=40, real_quick=8)
    track_every: int = option("measure the update against the start every N steps and at the end (updelta/* in "
                              "train_log.jsonl, rows in trajectory.parquet; 0: off)", 0)

    def __post_init__(self) -> None:
        check_choice("task", self.task, ("target", "knowledge"))
        if self.track_every < 0:
            raise OptionsError("need --track-every >= 0")
        check_choice("save dtype", self.save_dtype, ("bfloat16", "float32"))
        if self.save_every < 0 or (self.eval_items is not None and self.eval_items < 1):
            raise OptionsError("need --save-every >= 0 and --eval-items >= 1")
