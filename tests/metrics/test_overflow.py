"""Finite weights whose float32 squares overflow (only damaged files hold them) give finite, exact norms."""
import math

import numpy as np
import pytest
import torch

import updelta
from updelta.metrics import elementwise as ew
from updelta.metrics import pairwise as pw

import ckpt


def _pair(tmp_path, dtype):
    base = {"w": torch.zeros(600, dtype=dtype), "v": torch.full((4,), 0.5, dtype=dtype)}
    ft = {"w": torch.zeros(600, dtype=dtype), "v": base["v"].clone()}
    ft["w"][7] = 1e37
    ft["w"][300] = -2e37
    other = {"w": ft["w"].clone() * 0.5, "v": base["v"].clone()}
    return (ckpt.save(base, tmp_path / "b.safetensors"), ckpt.save(ft, tmp_path / "f.safetensors"),
            ckpt.save(other, tmp_path / "o.safetensors"), ft["w"].double())


def test_huge_finite_update_has_a_finite_exact_norm(tmp_path):
    for dtype in (torch.bfloat16, torch.float32):
        b, f, o, w = _pair(tmp_path, dtype)
        want = float(torch.sqrt((w * w).sum()))
        res = updelta.compare(b, {"f": f, "o": o}, spectral="off")
        row = res.tensors.set_index(["run", "name"]).loc[("f", "w")]
        assert math.isfinite(row["delta_fro"]) and abs(row["delta_fro"] / want - 1) < 1e-6
        assert abs(row["delta_max"] / float(w.abs().max()) - 1) < 1e-6
        pair = res.pairs.set_index("name").loc["w"]
        assert abs(pair["delta_cos"] - 1.0) < 1e-9  # o = f / 2: the same direction


def test_torch_reference_agrees_on_overflow():
    a = torch.zeros(300)
    b = torch.zeros(300)
    b[3], b[200] = 3e38, -3e38  # b - a is finite, (b - a)^2 overflows float32
    s = ew.partial_sums(a, b, 1e-5, 1e-3)
    assert math.isclose(s[3], 2 * 9e76, rel_tol=1e-6) and math.isfinite(s[6])
    c = torch.zeros(300)
    c[3], c[200] = -3e38, 3e38  # exactly opposite: cos = -1
    ps = pw.pair_partial_sums(torch.zeros(300), b, c, 1e-5, 1e-3)
    assert math.isclose(ps[1], -2 * 9e76, rel_tol=1e-6)
    np.testing.assert_allclose(ps[2], 2 * 9e76, rtol=1e-6)


def test_where_kernel_agrees_with_torch_on_damaged_2d_input(tmp_path, monkeypatch):
    """A 2-D update with a float32 difference that overflows (3e38 -> -3e38) and NaN/Inf entries: the fused C
    kernel's row/column energies (its chunk re-done in float64) equal the torch path's, and stay finite."""
    from safetensors.torch import save_file

    from updelta.scan.jobs import kernel

    name = "model.layers.0.mlp.down_proj.weight"
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(40, 300, generator=g) * 0.05
    w1 = w0 + torch.randn(40, 300, generator=g) * 1e-3 * torch.rand(40, 1, generator=g)
    w0[5, 7], w1[5, 7] = 3e38, -3e38
    w1[9, 100], w1[11, 3] = float("nan"), float("inf")
    save_file({name: w0}, str(tmp_path / "b.safetensors"))
    save_file({name: w1}, str(tmp_path / "f.safetensors"))

    def run():
        res = updelta.diff(tmp_path / "b.safetensors", tmp_path / "f.safetensors", spectral="off", block_elems=1000)
        return res.tensors.iloc[0], res.neurons.sort_values("rank")

    fast, fn = run()
    monkeypatch.setattr(kernel, "fused", None)  # the torch path
    slow, sn = run()
    assert fast["n_compared"] == slow["n_compared"] == 40 * 300 - 2
    for c in ("row_gini", "col_gini", "row_top10_share", "rows_for_90", "cols_for_90"):
        assert fast[c] == pytest.approx(slow[c], rel=1e-12), c
    assert fn["index"].tolist() == sn["index"].tolist() and len(fn) == 20
    np.testing.assert_allclose(fn["energy"].to_numpy(), sn["energy"].to_numpy(), rtol=1e-12)
    assert math.isfinite(fn["energy"].iloc[0]) and fn["energy"].iloc[0] == pytest.approx(36e76, rel=1e-6)
