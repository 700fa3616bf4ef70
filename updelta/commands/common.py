"""Helpers shared by the commands: run specs, output checks, the JSON summary of a result."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from updelta.errors import UpdeltaError

RUN_BASE_HELP = ("NAME=PATH: measure run NAME from PATH (the checkpoint it started from, e.g. the SFT run an RL run "
                 "continued; any input a base accepts, or another run's NAME) instead of the common base; cross-run "
                 "metrics only between runs of the same base (repeatable; docs/inputs.md, Per-run bases).")


def parse_runs(specs: list[str]) -> dict[str, str]:
    """NAME=PATH arguments -> {name: path}, in order; a bare PATH is named after its folder."""
    runs: dict[str, str] = {}
    for s in specs:
        name, sep, path = s.partition("=")
        if not sep:
            name, path = Path(s.rstrip("/")).name or s, s
        if not name or not path:
            raise UpdeltaError(f"{s!r}: expected NAME=PATH")
        if name in runs:
            raise UpdeltaError(f"run name {name!r} given twice; names must be unique")
        runs[name] = path
    return runs


def check_out(out: Optional[Path], kinds: tuple[str, ...]) -> None:
    """`out` (when given) must end in one of the suffixes `kinds`."""
    if out is not None and out.suffix.lower() not in kinds:
        raise UpdeltaError(f"{out}: unknown output type {out.suffix or '(none)'!r}; use one of {', '.join(kinds)}")


def result_json(res) -> dict:
    """Whole-model and per-component figures, pairing notes and identities, as plain JSON."""
    from updelta.tables.aggregate import noted_records  # fast --help: loaded when the command runs

    def recs(df):  # a row whose sparsity leaves tensors out says so (`sparsity_note`)
        return noted_records(df, json.loads(df.to_json(orient="records")))
    return {"summary": recs(res.summary), "components": recs(res.components),
            "pairs_summary": recs(res.pairs_summary) if len(res.pairs_summary) else [],
            "pairs_skipped": res.meta.get("pairs_skipped") or [],
            "pairing": res.meta.get("pairing"), "base": res.meta.get("base"), "runs": res.meta.get("runs"),
            "run_bases": res.meta.get("run_bases"),
            "options": res.meta.get("options"), "updelta_version": res.meta.get("updelta_version")}


def emit(res, out: Optional[Path], as_json: bool) -> None:
    """Save `res` to `out` (when given) and print its summary as text or JSON: what diff and compare end with."""
    import typer  # loaded only on this path

    from updelta.report.text import summary_text  # fast --help: loaded when the command runs

    if out is not None:
        res.save(out)
    if as_json:
        typer.echo(json.dumps(result_json(res), indent=1, default=str))
    else:
        typer.echo(summary_text(res))
        if out is not None:
            typer.echo(f"\nwrote {out}{'/' if not out.suffix else ''}")
