"""`updelta demo`: train a zoo of fine-tunes of a base (--base toy|smollm2|DIR), compare them and write a report
(`updelta.demo.zoo`; its flags come from the fields of `DemoOptions`, its help from `DEMO_HELP`)."""
from __future__ import annotations

import typer

from updelta.commands.params import with_options
from updelta.demo.zoo import DEMO_HELP, DemoOptions, format_table, run_demo
from updelta.demo.zoo_table import format_groups


@with_options(DemoOptions, help=DEMO_HELP)
def demo(opts: DemoOptions) -> None:
    """Train SFT, DFT, GRPO and ES fine-tunes of a base (toy, smollm2 or a folder), compare them and write a
    report."""

    res = run_demo(opts)
    typer.echo(format_table(res.table))
    if res.groups:

        typer.echo("\nThe trade-off per method and task (mean ± std over seeds):")
        typer.echo(format_groups(res.groups))
    typer.echo("\nClaims from the literature (and updelta's predictions), tested on this zoo:")
    for c in res.claims:
        kind = " (updelta's prediction)" if c.kind == "prediction" else ""
        typer.echo(f"  [{c.verdict}] {c.claim}{kind}: {c.text}")
    typer.echo(f"\nreport: {res.out / 'report.md'} (and report.html) in {res.seconds:.0f} s")


def register(app: typer.Typer) -> None:
    app.command()(demo)
