"""Fixtures of the plot tests: one real (small) compare result shared per module."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import ckpt  # noqa: E402


@pytest.fixture(scope="module")
def real_compare(tmp_path_factory):
    """A real compare of a 3-layer bf16 Llama-shaped base and three fine-tunes, histogram on, saved and loaded."""
    import updelta

    tmp = tmp_path_factory.mktemp("cmp")
    base = ckpt.llama_state(layers=3)
    b = ckpt.save(base, tmp / "base")
    runs = {name: str(ckpt.save(ckpt.perturb(base, frac=f, scale=s, seed=seed), tmp / name))
            for name, f, s, seed in (("sft", 0.9, 2e-2, 1), ("dft", 0.5, 1e-2, 2), ("grpo", 0.2, 5e-3, 3))}
    res = updelta.compare(str(b), runs, spectral="off", histogram=True)
    res.save(tmp / "result")
    return updelta.load(tmp / "result")
