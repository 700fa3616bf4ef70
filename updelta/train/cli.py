"""`updelta train ...`: thin commands over the library. Each command's flags and help are read from the fields of
its options dataclass, so the API and the CLI cannot drift apart.

    updelta train pretrain --out base/
    updelta train sft --task target --out runs/sft-0 --seed 0
    updelta train dft --task knowledge --out runs/dft-k --quick
"""
from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import typer

from updelta.commands.params import with_options
from updelta.train import METHODS
from updelta.train.options import OptionsError
from updelta.train.pretrain import PretrainOptions, pretrain
from updelta.train.runs import RunResult

WARNINGS = {"no_update": "the saved checkpoint is bit-identical to its start: nothing was learned (raise --lr or "
                         "the steps, or save in float32)",
            "no_signal": "every rollout's reward was constant (all 0 or all equal): the advantages were zero, so "
                         "the run had no learning signal"}

app = typer.Typer(help="Train small checkpoints on CPU with no downloads: pretrain a base, then fine-tune it by "
                       "SFT, DFT, GRPO or ES and record before/after accuracies.", no_args_is_help=True)


def _command(options_cls: type, run: Callable[[Any], RunResult], doc: str) -> Callable[..., None]:
    """A typer command whose flags are the fields of `options_cls` (`updelta.commands.params`); it builds the
    options, calls `run` and prints one line; bad options are one line on stderr and exit code 2."""
    def command(opts: Any) -> None:
        result = run(opts)
        changes = ", ".join(f"{k} {result.before[k]:.3f} -> {result.after[k]:.3f}" for k in result.after)
        print(f"wrote {result.out} in {result.seconds:.1f}s: {changes}")
        for flag in getattr(result, "warnings", {}):
            print(f"warning: {result.out}: {WARNINGS[flag]} ({flag}: true in eval.json)", file=sys.stderr)

    command.__doc__ = doc
    generated = with_options(options_cls)(command)

    @functools.wraps(generated)
    def one_line_errors(**kwargs: Any) -> None:
        try:
            generated(**kwargs)
        except OptionsError as e:
            print(f"error: {e}", file=sys.stderr)
            raise typer.Exit(2)

    return one_line_errors


app.command("pretrain")(_command(PretrainOptions, pretrain, pretrain.__doc__))
for _name, _method in METHODS.items():  # one command per registered method (train/__init__.py, METHODS)
    app.command(_name)(_command(_method.options, _method.train, _method.train.__doc__))
