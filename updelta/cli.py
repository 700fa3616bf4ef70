"""The `updelta` command line: thin wrappers over the library (`updelta.api`, `report`, `plot`, `train`).

Every `UpdeltaError` becomes one line on stderr and exit code 2; no traceback.
"""
from __future__ import annotations

import os

# The command line is a process of its own: idle OpenMP threads should sleep instead of spinning. On a
# shared 2-core machine spinning threads made torch's SVDs 10-20x slower (benchmarks/README.md). This must
# be set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from .errors import UpdeltaError
from .demo import DEMO_HELP, DemoOptions
from .options import DiffOptions, default_of, help_for

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Measure how post-training changed a language model's weights.")


def _opt(name: str, *flags: str):
    return typer.Option(*flags, help=help_for(name))


# Engine options shared by diff, compare, report and trajectory (help text lives in options.py).
Atol = Annotated[float, _opt("atol", "--atol")]
Eta = Annotated[float, _opt("eta", "--eta")]
Include = Annotated[Optional[List[str]], _opt("include", "--include")]
Exclude = Annotated[Optional[List[str]], _opt("exclude", "--exclude")]
Device = Annotated[str, _opt("device", "--device")]
Spectral = Annotated[str, _opt("spectral", "--spectral")]
TopK = Annotated[int, _opt("topk", "--topk")]
F64 = Annotated[bool, _opt("spectral_float64", "--spectral-float64")]
Alpha = Annotated[float, _opt("offprincipal_alpha", "--offprincipal-alpha")]
PrincK = Annotated[int, _opt("offprincipal_k", "--offprincipal-k")]
Mismatch = Annotated[str, _opt("on_shape_mismatch", "--on-shape-mismatch")]
Hist = Annotated[bool, _opt("histogram", "--histogram/--no-histogram")]
Threads = Annotated[int, _opt("threads", "--threads")]
ProgressOpt = Annotated[bool, _opt("progress", "--progress/--no-progress")]


def make_options(atol: float, eta: float, include, exclude, device: str, spectral: str, topk: int,
                 spectral_float64: bool, offprincipal_alpha: float, offprincipal_k: int, on_shape_mismatch: str,
                 histogram: bool, threads: int, progress: bool) -> DiffOptions:
    choices = {"device": ("auto", "cpu", "cuda"), "spectral": ("off", "fast", "full"),
               "on_shape_mismatch": ("error", "skip")}
    for k, allowed in choices.items():
        v = locals()[k]
        if v not in allowed:
            raise UpdeltaError(f"--{k.replace('_', '-')} {v!r}: choose one of {', '.join(allowed)}")
    if topk < 1:
        raise UpdeltaError("--topk must be at least 1")
    return DiffOptions(atol=atol, eta=eta, include=tuple(include or ()), exclude=tuple(exclude or ()),
                       device=device, spectral=spectral, topk=topk, spectral_float64=spectral_float64,
                       offprincipal_alpha=offprincipal_alpha, offprincipal_k=offprincipal_k,
                       on_shape_mismatch=on_shape_mismatch, histogram=histogram, threads=threads,
                       progress=progress)


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
    if out is not None and out.suffix.lower() not in kinds:
        raise UpdeltaError(f"{out}: unknown output type {out.suffix or '(none)'!r}; use one of {', '.join(kinds)}")


@app.command()
def diff(
    base: Annotated[str, typer.Argument(help="Base checkpoint: HF folder, .safetensors, or .bin/.pt state dict.")],
    finetuned: Annotated[str, typer.Argument(help="Fine-tuned checkpoint, any of the same layouts.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the per-tensor table: .parquet "
                                                "(options, summary, identities in its metadata), .csv or .json.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole-model summary as JSON instead of text.")] = False,
    atol: Atol = default_of("atol"), eta: Eta = default_of("eta"), include: Include = None, exclude: Exclude = None,
    device: Device = default_of("device"), spectral: Spectral = default_of("spectral"), topk: TopK = default_of("topk"),
    spectral_float64: F64 = False, offprincipal_alpha: Alpha = default_of("offprincipal_alpha"),
    offprincipal_k: PrincK = default_of("offprincipal_k"), on_shape_mismatch: Mismatch = "error",
    histogram: Hist = False, threads: Threads = 0, progress: ProgressOpt = True,
):
    """Diff one fine-tuned checkpoint against its base, tensor by tensor."""
    from .api import diff as run_diff
    from .text import summary_text

    check_out(out, (".parquet", ".csv", ".json"))
    opts = make_options(atol, eta, include, exclude, device, spectral, topk, spectral_float64, offprincipal_alpha,
                        offprincipal_k, on_shape_mismatch, histogram, threads, progress)
    res = run_diff(base, finetuned, opts)
    if out is not None:
        res.save(out)
    if as_json:
        typer.echo(json.dumps(summary_json(res), indent=1, default=str))
    else:
        typer.echo(summary_text(res))
        if out is not None:
            typer.echo(f"\nwrote {out}")


def summary_json(res) -> dict:
    """Whole-model and per-component figures, pairing notes and identities, as plain JSON."""
    def recs(df):
        return json.loads(df.to_json(orient="records"))
    return {"summary": recs(res.summary), "components": recs(res.components),
            "pairs_summary": recs(res.pairs_summary) if len(res.pairs_summary) else [],
            "pairing": res.meta.get("pairing"), "base": res.meta.get("base"), "runs": res.meta.get("runs"),
            "options": res.meta.get("options"), "updelta_version": res.meta.get("updelta_version")}


@app.command()
def compare(
    base: Annotated[str, typer.Argument(help="Base checkpoint every run started from.")],
    runs: Annotated[List[str], typer.Argument(help="Fine-tuned runs as NAME=PATH (pairs are ordered as given).")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write every table as parquet into this folder.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summaries as JSON instead of text.")] = False,
    atol: Atol = default_of("atol"), eta: Eta = default_of("eta"), include: Include = None, exclude: Exclude = None,
    device: Device = default_of("device"), spectral: Spectral = default_of("spectral"), topk: TopK = default_of("topk"),
    spectral_float64: F64 = False, offprincipal_alpha: Alpha = default_of("offprincipal_alpha"),
    offprincipal_k: PrincK = default_of("offprincipal_k"), on_shape_mismatch: Mismatch = "error",
    histogram: Hist = False, threads: Threads = 0, progress: ProgressOpt = True,
):
    """Compare several fine-tunes of one base in one streaming pass."""
    from .api import compare as run_compare
    from .text import summary_text

    if out is not None and out.suffix:
        raise UpdeltaError(f"{out}: --out takes a folder for compare (no file suffix)")
    opts = make_options(atol, eta, include, exclude, device, spectral, topk, spectral_float64, offprincipal_alpha,
                        offprincipal_k, on_shape_mismatch, histogram, threads, progress)
    res = run_compare(base, parse_runs(runs), opts)
    if out is not None:
        res.save(out)
    if as_json:
        typer.echo(json.dumps(summary_json(res), indent=1, default=str))
    else:
        typer.echo(summary_text(res))
        if out is not None:
            typer.echo(f"\nwrote {out}/")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False)
def train(ctx: typer.Context):
    """Train pretrain/SFT/DFT/GRPO/ES runs on a small built-in model (`updelta train --help`)."""
    # Imported on use: transformers takes seconds and ~150 MB to import, which `diff` must not pay.
    try:
        from .train.cli import app as train_app
    except ImportError as e:
        raise UpdeltaError(f"the trainer needs the train extra: pip install 'updelta[train]' ({e})") from None
    typer.main.get_command(train_app).main(args=ctx.args, prog_name="updelta train")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help=DEMO_HELP["out"])] = DemoOptions.out,
    quick: Annotated[bool, typer.Option("--quick", help=DEMO_HELP["quick"])] = DemoOptions.quick,
    seeds: Annotated[int, typer.Option("--seeds", help=DEMO_HELP["seeds"])] = DemoOptions.seeds,
    force: Annotated[bool, typer.Option("--force", help=DEMO_HELP["force"])] = DemoOptions.force,
):
    """Train SFT, DFT, GRPO and ES fine-tunes of the built-in base, compare them and write a report."""
    from .demo import format_table, run_demo

    res = run_demo(DemoOptions(out=out, quick=quick, seeds=seeds, force=force))
    typer.echo(format_table(res.table))
    typer.echo("\nClaims from the literature, tested on this zoo:")
    for c in res.claims:
        typer.echo(f"  [{c.verdict}] {c.claim}: {c.text}")
    typer.echo(f"\nreport: {res.out / 'report.md'} (and report.html) in {res.seconds:.0f} s")


def _register_subcommands() -> None:
    """Commands that live in their own modules (each module imports its heavy dependencies lazily)."""
    from .commands import plot, report, trajectory
    report.register(app)
    trajectory.register(app)
    plot.register(app)
    __import__("updelta.commands.base", fromlist=["register"]).register(app)


_register_subcommands()


def main() -> None:
    try:
        app()
    except SystemExit as e:
        if e.code == 130:  # typer turns Ctrl-C (KeyboardInterrupt) into a silent exit 130
            typer.echo("updelta: interrupted", err=True)
        raise
    except UpdeltaError as e:
        typer.echo(f"updelta: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("updelta: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
