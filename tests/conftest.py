"""Shared fixtures: small real checkpoints written under tmp_path (see tests/ckpt.py)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("UPDELTA_PROGRESS", "0")

import ckpt  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _spectral_cache_in_tmp(tmp_path_factory):
    """Base decompositions cached by `--spectral full` go to a session folder under pytest's tmp, never ~/.cache."""
    os.environ["UPDELTA_SPECTRAL_CACHE_DIR"] = str(tmp_path_factory.mktemp("spectral-cache"))


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test: the suite runs as 2 pytest workers on 2 cores, and oversubscribed OpenMP
    threads make small-model training many times slower (test_demo.py took 999 s against ~180 s)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def llama_pair(tmp_path):
    """(base_dir, ft_dir, base_sd, ft_sd): a bf16 Llama-shaped pair, 30% of elements perturbed."""
    base = ckpt.llama_state()
    ft = ckpt.perturb(base)
    return ckpt.save(base, tmp_path / "base"), ckpt.save(ft, tmp_path / "ft"), base, ft


@pytest.fixture
def llama_runs(tmp_path):
    """(base_dir, {name: dir}): a bf16 base and three fine-tunes with different seeds/scales."""
    base = ckpt.llama_state()
    b = ckpt.save(base, tmp_path / "base")
    runs = {name: ckpt.save(ckpt.perturb(base, frac=f, scale=s, seed=seed), tmp_path / name)
            for name, f, s, seed in (("sft", 0.9, 2e-2, 1), ("dft", 0.5, 1e-2, 2), ("grpo", 0.2, 5e-3, 3))}
    return b, runs


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct bf16 folder (`updelta.models.smollm2`): downloaded and converted once, into
    $UPDELTA_CACHE_DIR or the user cache dir (~/.cache/updelta), the one place tests may write outside tmp_path.
    Tests using it carry `@pytest.mark.real_model`."""
    from updelta.models.smollm2 import smollm2_path
    return smollm2_path()
