"""The small Llama-architecture base, and loading/saving checkpoints as Hugging Face folders.

Every folder the trainer writes holds `config.json`, `model.safetensors`, `generation_config.json` and the tokenizer
files, so `AutoModelForCausalLM.from_pretrained(folder)` and `AutoTokenizer.from_pretrained(folder)` load it.
Training always runs on float32 master weights; `save_checkpoint` casts a copy to the storage dtype.
"""
from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from .options import OptionsError, SaveDtype, check_choice
from .tokenizer import build_tokenizer


def default_base_path() -> Path:
    """The committed pretrained base (`updelta/assets/base/`); its README gives the command that recreates it."""
    return Path(__file__).resolve().parent.parent / "assets" / "base"


def tiny_llama_config(vocab_size: int, pad_token_id: int, bos_token_id: int, eos_token_id: int) -> LlamaConfig:
    """~0.87M parameters: 4 layers, hidden 128, 4 heads, untied lm_head (so the diff tools see one)."""
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128, rope_theta=10000.0,
        tie_word_embeddings=False, pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id)


def new_model(seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A freshly initialised float32 model (initialisation seeded by `seed`) and the char-level tokenizer."""
    tokenizer = build_tokenizer()
    config = tiny_llama_config(len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id,
                               tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    _set_generation_defaults(model, tokenizer)
    return model, tokenizer


def load_model(folder: str | Path, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel,
                                                                           PreTrainedTokenizerBase]:
    """Load any local Hugging Face causal-LM folder with float32 weights (or `dtype`), and its tokenizer (left
    padding)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise OptionsError(f"not a model folder (no config.json): {folder}")
    with _no_hf_progress_bars():
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    _set_generation_defaults(model, tokenizer)
    return model, tokenizer


def _set_generation_defaults(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id


def save_checkpoint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: str | Path,
                    dtype: SaveDtype = "bfloat16") -> Path:
    """Write `model` (cast to `dtype` on a copy) and `tokenizer` into `folder` as a Hugging Face checkpoint.

    Not atomic by itself: the trainer writes checkpoints inside a run folder that is built under a temporary name
    and renamed into place when the run succeeds (see `runs.py`).
    """
    check_choice("save dtype", dtype, ("bfloat16", "float32"))
    stored = copy.deepcopy(model).to(getattr(torch, dtype))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with _no_hf_progress_bars():
        stored.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
    return folder


@contextlib.contextmanager
def _no_hf_progress_bars():
    """transformers draws a bar per load/save; our own Progress bar is the only one a run shows."""
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
