"""The small Llama-architecture base, and loading/saving checkpoints as Hugging Face folders.

Every folder the trainer writes holds `config.json`, `model.safetensors`, `generation_config.json` and the tokenizer
files, so `AutoModelForCausalLM.from_pretrained(folder)` and `AutoTokenizer.from_pretrained(folder)` load it.
Training always runs on float32 master weights; `save_checkpoint` writes them cast to the storage dtype.
"""
from __future__ import annotations

import contextlib
import ctypes
import itertools
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from updelta.train.options import OptionsError, SaveDtype, check_choice
from updelta.train.tokenizer import build_tokenizer


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


@torch.no_grad()
def load_weights(model: PreTrainedModel, folder: str | Path) -> PreTrainedModel:
    """Copy the weights saved in `folder` into `model`, cast to the model's dtype: afterwards `model` computes what
    `load_model(folder)` would load, without a second model in memory. Raises OptionsError when a parameter is
    missing from the folder or a shape differs."""
    params = dict(model.named_parameters())  # tied weights once (e.g. lm_head shares embed_tokens)
    found: set[str] = set()
    for f in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            for name in h.keys():
                if name in params:
                    t = h.get_tensor(name)
                    if t.shape != params[name].shape:
                        raise OptionsError(f"{folder}: {name} has shape {tuple(t.shape)}, the model "
                                           f"{tuple(params[name].shape)}")
                    params[name].copy_(t)
                    found.add(name)
    missing = sorted(set(params) - found)
    if missing:
        raise OptionsError(f"{folder}: no weights for {missing[0]} (and {len(missing) - 1} more)")
    return model


def activation_checkpointing(model: PreTrainedModel, on: bool) -> None:
    """Recompute each layer's activations in the backward pass (non-reentrant; the same gradients, less memory).
    transformers 5 names it activation checkpointing, 4.x gradient checkpointing."""
    if on:
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif hasattr(model, "activation_checkpointing_disable"):
        model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_disable()


def bound_heap() -> None:
    """Let glibc's malloc give every allocation over 1 MiB its own mapping, returned to the operating system when
    freed (a no-op elsewhere). Without it malloc's adaptive threshold soon serves tensors of tens of MB from the heap,
    whose freed space stays resident: on SmolLM2, GRPO's peak RSS was ~0.2 GB higher. Process-wide and without
    effect on any result; the trainer sets it for a real base."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 20)  # M_TRIM_THRESHOLD


def release_memory() -> None:
    """Hand freed heap memory back to the operating system (glibc's malloc_trim; a no-op elsewhere), so that a
    phase's freed tensors do not stay in the resident set of the next one."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _set_generation_defaults(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id


def save_checkpoint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: str | Path,
                    dtype: SaveDtype = "bfloat16") -> Path:
    """Write `model` (cast to `dtype`, its own weights left as they are) and `tokenizer` into `folder` as a Hugging Face checkpoint.

    Not atomic by itself: the trainer writes checkpoints inside a run folder that is built under a temporary name
    and renamed into place when the run succeeds (see `runs.py`).
    """
    check_choice("save dtype", dtype, ("bfloat16", "float32"))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with _no_hf_progress_bars(), _stored_as(model, getattr(torch, dtype)) as stored:
        stored.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
    return folder


@contextlib.contextmanager
def _stored_as(model: PreTrainedModel, dtype: torch.dtype):
    """`model` with its floating-point parameters and buffers cast to `dtype` in place, the original tensors put back
    afterwards (also on an error): the cast copy is the only extra memory, never a second float32 model. Tied weights
    are one parameter, cast once; `config.dtype`, which saving sets from the model, is restored too."""
    kept = [(t, t.data) for t in itertools.chain(model.parameters(), model.buffers())
            if t.is_floating_point() and t.dtype != dtype]
    config_dtype = getattr(model.config, "dtype", None)
    try:
        for t, data in kept:
            t.data = data.to(dtype)
        yield model
    finally:
        for t, data in kept:
            t.data = data
        model.config.dtype = config_dtype


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
