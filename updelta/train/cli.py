"""`updelta train ...`: thin commands over the library. Each command's flags and help are read from the fields of
its options dataclass, so the API and the CLI cannot drift apart.

    updelta train pretrain --out base/
    updelta train sft --task target --out runs/sft-0 --seed 0
    updelta train dft --task knowledge --out runs/dft-k --quick
"""
from __future__ import annotations

import dataclasses
import inspect
import sys
import typing
from typing import Any, Callable

import typer

from . import dft, es, grpo, sft
from .options import OptionsError
from .pretrain import PretrainOptions, pretrain
from .runs import RunResult

app = typer.Typer(help="Train small checkpoints on CPU with no downloads: pretrain a base, then fine-tune it by "
                       "SFT, DFT, GRPO or ES and record before/after accuracies.", no_args_is_help=True)


def _cli_type(hint: Any) -> Any:
    """Literal choices become plain strings: the options class validates them with a one-line error."""
    if typing.get_origin(hint) is typing.Literal:
        return str
    return hint


def _command(options_cls: type, run: Callable[[Any], RunResult], doc: str) -> Callable[..., None]:
    """A typer command whose parameters are the fields of `options_cls`; it builds the options and calls `run`."""
    hints = typing.get_type_hints(options_cls)
    params = []
    for f in dataclasses.fields(options_cls):
        default = ... if f.default is dataclasses.MISSING else f.default
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=_cli_type(hints[f.name]),
                                        default=typer.Option(default, help=f.metadata["help"])))

    def command(**kwargs: Any) -> None:
        try:
            result = run(options_cls(**kwargs))
        except OptionsError as e:
            print(f"error: {e}", file=sys.stderr)
            raise typer.Exit(2)
        changes = ", ".join(f"{k} {result.before[k]:.3f} -> {result.after[k]:.3f}" for k in result.after)
        print(f"wrote {result.out} in {result.seconds:.1f}s: {changes}")

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = doc
    return command


app.command("pretrain")(_command(PretrainOptions, pretrain, pretrain.__doc__))
app.command("sft")(_command(sft.SFTOptions, sft.train, sft.train.__doc__))
app.command("dft")(_command(dft.DFTOptions, dft.train, dft.train.__doc__))
app.command("grpo")(_command(grpo.GRPOOptions, grpo.train, grpo.train.__doc__))
app.command("es")(_command(es.ESOptions, es.train, es.train.__doc__))
