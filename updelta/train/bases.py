"""`--base` of `updelta train` and `updelta demo`: a name or a folder.

    resolve_base(None) / resolve_base("toy")   the committed char-level base (`model.default_base_path()`)
    resolve_base("smollm2")                    SmolLM2-135M-Instruct from the updelta cache (`updelta.models.smollm2`),
                                               fetched and converted once
    resolve_base("path/to/folder")             any local Hugging Face causal-LM folder (AutoModelForCausalLM +
                                               AutoTokenizer), e.g. a finished run folder (RL from an SFT run)

Which presets and tasks a base gets is decided from its tokenizer (`suites.profile`): the char-level one is "toy",
every other is "real".
"""
from __future__ import annotations

import json
from pathlib import Path

from updelta.errors import UpdeltaError
from updelta.models.smollm2 import smollm2_path
from updelta.train.model import default_base_path
from updelta.train.options import OptionsError

NAMES = ("toy", "smollm2")


def resolve_base(value: str | Path | None) -> Path:
    """The folder of a `--base` value (see the module docstring); OptionsError when it is neither."""
    if value is None or str(value) == "toy":
        return default_base_path()
    if str(value) == "smollm2":

        try:
            return smollm2_path()
        except UpdeltaError as e:
            raise OptionsError(f"--base smollm2: {e}") from None
    path = Path(value)
    if not (path / "config.json").is_file():
        raise OptionsError(f"--base {value}: not a model folder (no config.json); use toy, smollm2 or a local "
                           f"Hugging Face causal-LM folder")
    return path


def start_of(base: Path) -> str:
    """What a run starts from: the method of the fine-tuning run folder `base` (its eval.json), else "base" (a
    pretrained base, including the committed one whose eval.json says "pretrain")."""
    try:
        method = str(json.loads((base / "eval.json").read_text())["method"])
    except (OSError, ValueError, KeyError, TypeError):
        return "base"
    return "base" if method == "pretrain" else method
