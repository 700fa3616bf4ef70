"""`updelta demo`: train a zoo of fine-tunes of a base (--base toy|smollm2|DIR), compare them and write a report
(`updelta.demo.zoo`; its flags come from the fields of `DemoOptions`, its help from `DEMO_HELP`)."""
from __future__ import annotations

import typer

from updelta.commands.params import with_options
from updelta.demo.zoo import DEMO_HELP, DemoOptions, format_table, run_demo


@with_options(DemoOptions, help=DEMO_HELP)
def demo(opts: DemoOptions) -> None:
    """Train SFT, DFT, GRPO and ES fine-tunes of a base (toy, smollm2 or a folder), compare them and write a
    report."""

    res = run_demo(opts)
    typer.echo(format_table(res.table))
    typer.echo("\nClaims from the literature, tested on this zoo:")
    for c in res.claims:
        typer.echo(f"  [{c.verdict}] {c.claim}: {c.text}")
    typer.echo(f"\nreport: {res.out / 'report.md'} (and report.html) in {res.seconds:.0f} s")


def register(app: typer.Typer) -> None:
    app.command()(demo)
