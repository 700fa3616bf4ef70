"""Finite weights whose float32 squares overflow (only damaged files hold them) give finite, exact norms."""
import math

import numpy as np
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
