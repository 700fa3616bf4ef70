"""Typer parameters generated from the fields of a frozen options dataclass, so that an option is declared once.

    @with_options(DiffOptions)
    def diff(base: ..., finetuned: ..., opts: DiffOptions): ...

gives `diff` one command-line option per field of `DiffOptions`, after its own parameters, and passes the
parsed values to it as one `DiffOptions` (built by `build`). For each field:

- flag: the field name with dashes (`on_shape_mismatch` -> `--on-shape-mismatch`); bool -> `--x` and `--no-x`, of
  which the help lists the one that changes the default (`--histogram`, `--no-progress`, whose help says that it
  turns the default off); both are accepted; no value placeholder;
- help: `field.metadata["help"]` (or a `help` mapping given here); default: the field's default;
- `Literal[...]` -> a string, checked by the dataclass (a one-line error, not click's box);
- `tuple[str, ...]` -> a repeatable option, turned back into a tuple.

Only typer and the standard library: used by the main CLI and by the trainer's (`updelta.train.cli`).
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from typing import Any, Callable, List, Mapping, Optional

import typer

Annotated = typing.Annotated

ENGINE_PANEL = "Engine options"  # where `diff`, `compare`, `report`, `trajectory` list the DiffOptions flags


NEGATE = "__negated"  # suffix of the hidden parameter of a bool field's other flag


def off_help(help_text: str, on: str) -> str:
    """The help of a listed `--no-x` flag, from the help of `--x` (which describes what is on by default)."""
    return f"Turns off what {on} (on by default) does: {help_text}"


def _field_param(f: dataclasses.Field, hint: Any, help_text: str, panel: Optional[str]) -> list[inspect.Parameter]:
    flag = "--" + f.name.replace("_", "-")
    decls: tuple[str, ...] = (flag,)
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    else:
        default = inspect.Parameter.empty  # a required option
    typ = hint
    metavar = None
    if hint is bool:
        # One visible flag, the one that changes the default; its opposite is accepted, hidden from --help (a
        # second column of --no-x flags halved the width left for help text at 80 columns). No value placeholder (a
        # flag takes none), and the help of a listed `--no-x` says that it turns the described behaviour off.
        on, off = flag, f"--no-{flag[2:]}"
        shown, hidden = (off, on) if default is True else (on, off)
        what = off_help(help_text, on) if default is True else help_text
        first = typer.Option(shown, help=what, rich_help_panel=panel, show_default=False, metavar="")
        second = typer.Option(hidden, hidden=True)
        names = (f.name + NEGATE, f.name) if default is True else (f.name, f.name + NEGATE)
        return [inspect.Parameter(names[0], inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[bool, first],
                                  default=False),
                inspect.Parameter(names[1], inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[bool, second],
                                  default=False)]
    if typing.get_origin(hint) is typing.Literal:
        typ = str  # the choices are named in the help text; the dataclass checks them
    elif typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        typ = Optional[List[args[0] if args else str]]
        default = list(default) if default else None
        metavar = "TEXT"
    info = typer.Option(*decls, help=help_text, rich_help_panel=panel, metavar=metavar)
    return [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[typ, info],
                              default=default)]


def option_params(cls: type, help: Optional[Mapping[str, str]] = None,
                  panel: Optional[str] = None) -> list[inspect.Parameter]:
    """One keyword-only typer parameter per field of the dataclass `cls`, in field order (listed under the help
    panel `panel` when given)."""
    hints = typing.get_type_hints(cls)
    help = help or {}
    return [p for f in dataclasses.fields(cls)
            for p in _field_param(f, hints[f.name], help.get(f.name, f.metadata.get("help", "")), panel)]


def build(cls: type, values: Mapping[str, Any]) -> Any:
    """The options object from parsed command-line values (repeatable options back to tuples)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if hints[f.name] is bool and (f.name in values or f.name + NEGATE in values):
            on, off = bool(values.get(f.name)), bool(values.get(f.name + NEGATE))
            if on or off:  # --x: True, --no-x: False (neither: the field's default)
                kwargs[f.name] = on
            continue
        if f.name not in values:
            continue
        v = values[f.name]
        if typing.get_origin(hints[f.name]) is tuple:
            v = tuple(v or ())
        kwargs[f.name] = v
    return cls(**kwargs)


def with_options(cls: type, *, param: str = "opts", help: Optional[Mapping[str, str]] = None,
                 panel: Optional[str] = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command function that takes its options as `param`: the command gets one option per field of
    `cls` (after its own parameters) and `param` receives `cls` built from them."""
    generated = option_params(cls, help, panel)
    names = [p.name for p in generated]

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn, eval_str=True)
        if param not in sig.parameters:
            raise TypeError(f"{fn.__name__} has no parameter {param!r} for its {cls.__name__}")
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in sig.parameters.values() if p.name != param]
        clash = {p.name for p in own} & set(names)
        if clash:
            raise TypeError(f"{fn.__name__}: parameters {sorted(clash)} clash with fields of {cls.__name__}")

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            values = {n: kwargs.pop(n) for n in names if n in kwargs}
            return fn(**kwargs, **{param: build(cls, values)})

        params = own + generated
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # typer must see the generated signature, not `fn`'s
        return command

    return decorate
