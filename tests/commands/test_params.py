"""`updelta.commands.params`: typer parameters generated from a frozen options dataclass, and the options object
built back from the parsed values."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest
import typer
from typer.testing import CliRunner

from updelta.commands.params import NEGATE, option_params, with_options


class Bad(ValueError):
    pass


@dataclass(frozen=True)
class Toy:
    out: Path = field(metadata={"help": "where to write"})
    mode: Literal["a", "b"] = field(default="a", metadata={"help": "mode a or b"})
    names: tuple[str, ...] = field(default=(), metadata={"help": "a name (repeatable)"})
    loud: bool = field(default=False, metadata={"help": "say more"})
    steps: Optional[int] = field(default=None, metadata={"help": "how many steps"})
    some_rate: float = field(default=0.5, metadata={"help": "a rate"})

    def __post_init__(self):
        if self.mode not in ("a", "b"):
            raise Bad(f"--mode {self.mode!r}: choose a or b")


def _app(**kw):
    seen = []
    app = typer.Typer()

    @app.command()
    @with_options(Toy, **kw)
    def run(label: str = typer.Option("x", "--label"), *, opts: Toy) -> None:
        seen.append((label, opts))

    @app.command()
    def other() -> None:  # two commands, so `run` is a subcommand as in the real CLI
        pass

    return app, seen


def test_flags_defaults_and_the_options_object():
    app, seen = _app()
    r = CliRunner().invoke(app, ["run", "--out", "o", "--names", "p", "--names", "q", "--loud", "--some-rate", "2",
                                 "--steps", "3", "--label", "L"])
    assert r.exit_code == 0, r.output
    assert seen == [("L", Toy(out=Path("o"), names=("p", "q"), loud=True, steps=3, some_rate=2.0))]
    r = CliRunner().invoke(app, ["run", "--out", "o", "--no-loud"])
    assert r.exit_code == 0 and seen[-1] == ("x", Toy(out=Path("o")))
    assert type(seen[-1][1].names) is tuple


def test_a_field_without_default_is_a_required_flag():
    app, seen = _app()
    r = CliRunner().invoke(app, ["run"])
    assert r.exit_code == 2 and "--out" in r.output and not seen


def test_literal_values_are_checked_by_the_dataclass():
    app, seen = _app()
    r = CliRunner().invoke(app, ["run", "--out", "o", "--mode", "c"])
    assert isinstance(r.exception, Bad) and "--mode 'c'" in str(r.exception) and not seen


def test_help_comes_from_the_fields_or_a_mapping():
    params = option_params(Toy)
    names = [n for f in dataclasses.fields(Toy) for n in ((f.name, f.name + NEGATE) if f.type is bool or
                                                         f.type == "bool" else (f.name,))]
    assert [p.name for p in params] == names  # a bool field: its flag, then its hidden opposite
    assert all(p.kind is p.KEYWORD_ONLY for p in params)
    cmd = typer.main.get_command(_app()[0]).commands["run"]
    click_params = {p.name: p for p in cmd.params}
    assert list(click_params) == ["label"] + names
    assert click_params["some_rate"].opts == ["--some-rate"] and click_params["some_rate"].help == "a rate"
    assert click_params["loud"].opts == ["--loud"] and click_params["loud" + NEGATE].opts == ["--no-loud"]
    assert click_params["loud" + NEGATE].hidden and click_params["some_rate"].default == 0.5
    assert click_params["out"].required and click_params["names"].multiple
    cmd = typer.main.get_command(_app(help={"loud": "LOUDER"}, panel="Toy options")[0]).commands["run"]
    click_params = {p.name: p for p in cmd.params}
    assert click_params["loud"].help == "LOUDER" and click_params["mode"].help == "mode a or b"
    assert click_params["out"].rich_help_panel == "Toy options" and click_params["label"].rich_help_panel is None


def test_a_command_must_take_the_options_and_not_clash_with_them():
    with pytest.raises(TypeError, match="no parameter 'opts'"):
        with_options(Toy)(lambda out: None)
    with pytest.raises(TypeError, match="clash"):
        with_options(Toy)(lambda out, opts: None)


def test_demo_flags_come_from_demo_options():
    from updelta.cli import app
    from updelta.demo.zoo import DEMO_HELP, DemoOptions

    params = {p.name: p for p in typer.main.get_command(app).commands["demo"].params}
    for f in dataclasses.fields(DemoOptions):
        assert params[f.name].help == DEMO_HELP[f.name]
        assert params[f.name].default == f.default
