"""Streamed `fast` spectra and the `full` memory budget (docs/metrics.md, "Streamed spectra").

Known answers: an update with a planted spectrum (U diag(s) V^T, s known) in a real checkpoint pair; the streaming
path is forced on these small tensors (`--max-memory 1`) and its columns must agree with the materialised path and
with exact float64 singular values within the documented tolerance (topk_sv 1e-3 relative; ||D||_F^2 exact)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import ckpt
import updelta
from updelta.errors import UpdeltaError
from updelta.metrics import spectral as sp
from updelta.options import DiffOptions, memory_bytes

FAST_COLS = ("topk_sv", "stable_rank", "topk_energy", "energy_rank_90", "energy_rank_99")
NAME = "model.layers.0.mlp.down_proj.weight"


def _orth(m: int, r: int, seed: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(m, r, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))[0]


def _planted(m: int, n: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """A spectrum with a decaying head and a flat floor: s_i = 0.5 * 0.85^i (i < 40), then 1e-3."""
    r = min(m, n)
    s = np.concatenate([0.5 * 0.85 ** np.arange(40), np.full(r - 40, 1e-3)])
    return (_orth(m, r, seed) * torch.from_numpy(s)) @ _orth(n, r, seed + 1).T, s


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A float32 Llama-shaped pair (base, ft, exact float64 singular values of the stored D per tensor) whose
    down_proj (96 x 300) and gate_proj (300 x 96) updates carry the planted spectrum."""
    root = tmp_path_factory.mktemp("streamed")
    sd = ckpt.llama_state(layers=1, hidden=96, inter=300, vocab=200, dtype=torch.float32)
    ft = ckpt.perturb(sd, frac=0.5, scale=1e-2, seed=3)
    for name, shape, seed in ((NAME, (96, 300), 0), ("model.layers.0.mlp.gate_proj.weight", (300, 96), 5)):
        ft[name] = (sd[name].double() + _planted(*shape, seed)[0]).float()
    exact = {n: torch.linalg.svdvals(ft[n].double() - sd[n].double()).numpy() for n in sd if sd[n].ndim == 2}
    return ckpt.save(sd, root / "base"), ckpt.save(ft, root / "ft"), exact


def _rows(res):
    return res.tensors[res.tensors["topk_sv"].notna()].set_index("name")


def test_streamed_matches_materialised_and_exact(pair):
    base, ft, exact = pair
    a = updelta.diff(base, ft, DiffOptions(progress=False))
    b = updelta.diff(base, ft, DiffOptions(progress=False, max_memory="1"))  # every 2-D tensor streamed
    ra, rb = _rows(a), _rows(b)
    assert sorted(ra.index) == sorted(rb.index) == sorted(exact)
    for name, s in exact.items():
        k = len(rb.loc[name, "topk_sv"])
        ex = s[:k]
        got = np.asarray(rb.loc[name, "topk_sv"], float)
        assert np.max(np.abs(got - ex) / ex) <= 1e-3, name
        assert np.max(np.abs(got - np.asarray(ra.loc[name, "topk_sv"], float)) / ex) <= 1e-3, name
        fro2 = float(np.sum(s ** 2))
        assert abs(rb.loc[name, "stable_rank"] - fro2 / ex[0] ** 2) <= 2e-3 * fro2 / ex[0] ** 2, name
        assert abs(rb.loc[name, "topk_energy"] - np.sum(ex ** 2) / fro2) <= 2e-3, name
        for col in ("energy_rank_90", "energy_rank_99"):
            same = ra.loc[name, col], rb.loc[name, col]
            assert (pd_na(same[0]) and pd_na(same[1])) or same[0] == same[1], (name, col, same)
        assert 0.0 <= rb.loc[name, "topk_sv_err_est"] <= 2.5e-4


def pd_na(x) -> bool:
    return x is None or (np.isscalar(x) and np.isnan(x))


def test_planted_spectrum_known_answer_in_the_streamed_solver():
    """The solver alone, on rows of a planted D (both orientations, both dtypes): the planted s to 1e-3 (far
    better in fact), ||D||_F^2 to float64 rounding, the basis spanning the top right singular vectors."""
    D, s = _planted(400, 150, seed=11)
    for dt in (torch.float32, torch.float64):
        X = D.to(dt)
        exact = torch.linalg.svdvals(X.double()).numpy()
        for M, N, rows in ((400, 150, lambda a, b: X[a:b]), (150, 400, lambda a, b: X.T[a:b])):
            cols, res = sp.streamed_columns(rows, (M, N), DiffOptions(), 64 << 20, keep_vectors=3)
            assert np.max(np.abs(np.asarray(cols["topk_sv"]) - exact[:16]) / exact[:16]) <= 1e-6
            assert np.max(np.abs(exact[:16] - s[:16]) / s[:16]) <= 1e-5 or dt == torch.float32
            assert abs(res.fro2 - float(np.sum(exact ** 2))) <= 1e-9 * res.fro2
            V = torch.linalg.svd(X.double() if M == 400 else X.double().T)[2][:3].T
            assert torch.linalg.svdvals(V.T @ res.basis[:, :3]).min() >= 1 - 1e-6


def test_streamed_non_finite_and_zero():
    D = torch.zeros(200, 120)
    cols, res = sp.streamed_columns(lambda a, b: D[a:b], (200, 120), DiffOptions(), 1 << 24)
    assert cols["topk_sv"] == [0.0] * 16 and cols["stable_rank"] is None and cols["energy_rank_90"] == 0
    D[37, 5] = float("nan")
    cols, res = sp.streamed_columns(lambda a, b: D[a:b], (200, 120), DiffOptions(), 1 << 24)
    assert res is None and cols["topk_sv"] is None and cols["stable_rank"] is None


def test_full_over_budget_is_refused_with_one_line(pair):
    base, ft, _ = pair
    res = updelta.diff(base, ft, DiffOptions(progress=False, spectral="full", max_memory="1M"))
    rows = res.tensors.set_index("name")
    notes = [w for w in res.warnings if "--max-memory" in w]
    # down_proj 96 x 300 float32 needs 6 * 4 * 28800 + 4 * 28800 bytes (0.8 MiB): within 1 MiB
    assert not notes and rows.loc[NAME, "nss"] is not None
    res = updelta.diff(base, ft, DiffOptions(progress=False, spectral="full", max_memory="600K"))
    rows = res.tensors.set_index("name")
    notes = [w for w in res.warnings if "--max-memory" in w]
    need = sp.full_bytes((96, 300), DiffOptions(spectral="full"), 4 * 96 * 300)
    assert any(w.startswith(NAME) and f"needs about {need} bytes" in w for w in notes), notes
    assert all("\n" not in w for w in notes)
    assert pd_na(rows.loc[NAME, "nss"]) and pd_na(rows.loc[NAME, "topk_sv"])
    small = "model.layers.0.self_attn.q_proj.weight"  # 96 x 96 float32: 258 KiB, within the budget
    assert not pd_na(rows.loc[small, "nss"])


def test_max_memory_values():
    assert memory_bytes("auto") is None and memory_bytes("4G") == 4 << 30 and memory_bytes("512MiB") == 512 << 20
    assert memory_bytes("1") == 1 and memory_bytes("1.5K") == 1536
    for bad in ("x", "0", "-1G", "4Q"):
        with pytest.raises(UpdeltaError, match="--max-memory"):
            DiffOptions(max_memory=bad)
