"""Known-answer tests of the cheap metric family and of the fused pass against its definitions."""
import math

import numpy as np
import pytest
import torch

import updelta
from updelta.scan.jobs import kernel
from updelta.errors import UpdeltaWarning
from updelta.metrics import REGISTRY

import ckpt

BF16_ULP_SMALL = 2.0 ** -17  # ulp of bf16 in [2^-10, 2^-9): 2^-10 * 2^-7
BF16_ULP_HALF = 2.0 ** -8  # ulp of bf16 in [0.5, 1)


def _bf16_next(x: torch.Tensor) -> torch.Tensor:
    """The next bf16 value up (one ULP), by incrementing the bit pattern of positive values."""
    bits = x.view(torch.int16) + 1
    return bits.view(torch.bfloat16)


def test_bf16_one_ulp_small_and_ordinary(tmp_path):
    # 500 small weights (|w| ~ 1e-3 < 2e-3) and 500 ordinary ones (0.5); move 100 small and 200 ordinary by one ULP.
    base = torch.cat([torch.full((500,), 1e-3), torch.full((500,), 0.5)]).to(torch.bfloat16)
    ft = base.clone()
    ft[:100] = _bf16_next(base[:100])
    ft[500:700] = _bf16_next(base[500:700])
    assert float(ft[0]) - float(base[0]) == BF16_ULP_SMALL and float(ft[500]) - float(base[500]) == BF16_ULP_HALF
    b = ckpt.save({"w": base.reshape(10, 100)}, tmp_path / "b.safetensors")
    f = ckpt.save({"w": ft.reshape(10, 100)}, tmp_path / "f.safetensors")
    row = updelta.diff(b, f, spectral="off").tensors.iloc[0]
    assert row["sparsity_exact"] == 700 / 1000
    assert row["sparsity_atol"] == 800 / 1000  # a one-ULP change of |w| < 2e-3 is below atol = 1e-5
    assert row["sparsity_rtol"] == row["sparsity_exact"]  # eta = 1e-3 equals exact on bf16
    exp_fro = math.sqrt(100 * BF16_ULP_SMALL ** 2 + 200 * BF16_ULP_HALF ** 2)
    assert row["delta_fro"] == pytest.approx(exp_fro, rel=1e-6)
    assert row["delta_max"] == BF16_ULP_HALF
    assert row["delta_mean_abs"] == pytest.approx((100 * BF16_ULP_SMALL + 200 * BF16_ULP_HALF) / 1000, rel=1e-6)
    w0 = base.double()
    assert row["base_fro"] == pytest.approx(float(w0.norm()), rel=1e-6)
    assert row["rel_delta"] == pytest.approx(exp_fro / float(w0.norm()), rel=1e-6)
    assert row["cos_delta_base"] == pytest.approx(float(((ft.double() - w0) * w0).sum()) / (exp_fro * float(w0.norm())), rel=1e-6)
    assert row["dtype_base"] == "bfloat16" and row["dtype_ft"] == "bfloat16" and row["shape"] == [10, 100]


def test_fp32_tiny_relative_changes_part_the_conventions(tmp_path):
    # Base 1.0 everywhere. 100 elements moved by 2e-6 (exact: changed; atol: unchanged; rtol: unchanged),
    # 200 by 5e-4 (exact, atol: changed; rtol (eta 1e-3): unchanged), 300 by 2e-3 (changed everywhere).
    base = torch.ones(1000, dtype=torch.float32)
    ft = base.clone()
    ft[:100] += 2e-6
    ft[100:300] += 5e-4
    ft[300:600] += 2e-3
    b = ckpt.save({"w": base}, tmp_path / "b.safetensors")
    f = ckpt.save({"w": ft}, tmp_path / "f.safetensors")
    row = updelta.diff(b, f, spectral="off").tensors.iloc[0]
    assert row["sparsity_exact"] == 400 / 1000
    assert row["sparsity_atol"] == 500 / 1000
    assert row["sparsity_rtol"] == 700 / 1000
    d = (ft.double() - base.double())
    assert row["delta_fro"] == pytest.approx(float(d.norm()), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
def test_fused_pass_matches_registry_definitions(tmp_path, dtype):
    g = torch.Generator().manual_seed(3)
    w0 = (torch.randn(37, 53, generator=g) * 0.05).to(dtype)
    w1 = (w0.float() + torch.randn(37, 53, generator=g) * 1e-3 * (torch.rand(37, 53, generator=g) < 0.4)).to(dtype)
    b = ckpt.save({"w": w0}, tmp_path / "b.safetensors")
    f = ckpt.save({"w": w1}, tmp_path / "f.safetensors")
    row = updelta.diff(b, f, spectral="off", block_elems=64).tensors.iloc[0]  # many blocks, one partial
    for name in ["delta_fro", "base_fro", "rel_delta", "delta_max", "delta_mean_abs", "cos_delta_base",
                 "sparsity_exact", "sparsity_atol", "sparsity_rtol"]:
        assert row[name] == pytest.approx(REGISTRY[name](w0, w1), rel=2e-6, abs=1e-12), name


def test_torch_path_equals_c_kernel(tmp_path, monkeypatch):

    if kernel.fused is None:
        pytest.fail("the C kernel updelta._fused was not built")
    base = ckpt.llama_state(dtype=torch.bfloat16)
    ft = ckpt.perturb(base, frac=0.5, scale=1e-3)
    ft["model.norm.weight"] = ft["model.norm.weight"].float()  # mixed dtypes
    b, f = ckpt.save(base, tmp_path / "b"), ckpt.save(ft, tmp_path / "f")
    fast = updelta.diff(b, f, spectral="off", histogram=True).tensors
    monkeypatch.setattr(kernel, "fused", None)
    slow = updelta.diff(b, f, spectral="off", histogram=True).tensors
    for c in ["delta_fro", "base_fro", "delta_max", "delta_mean_abs", "cos_delta_base"]:
        np.testing.assert_allclose(fast[c], slow[c], rtol=1e-5, atol=1e-12, err_msg=c)
    for c in ["sparsity_exact", "sparsity_atol", "sparsity_rtol", "n_compared"]:
        assert (fast[c] == slow[c]).all(), c
    assert [list(h) for h in fast["hist"]] == [list(h) for h in slow["hist"]]


def test_histogram_counts_sum_to_elements_and_bin_exactly(tmp_path):
    base = torch.zeros(6, dtype=torch.float32)
    ft = torch.tensor([0.0, 1.0, 1.5, 2.0 ** -20, -3.0, 0.0])
    b = ckpt.save({"w": base}, tmp_path / "b.safetensors")
    f = ckpt.save({"w": ft}, tmp_path / "f.safetensors")
    r = updelta.diff(b, f, spectral="off", histogram=True)
    h = r.tensors.iloc[0]["hist"]
    edges = r.meta["hist_edges"]
    assert sum(h) == 6 and h[256] == 2
    assert h[127] == 2  # |D| in [1, 2): 1.0 and 1.5
    assert h[128] == 1  # [2, 4): 3.0
    assert h[127 - 20] == 1 and edges[127 - 20] == 2.0 ** -20


def test_nonfinite_counted_and_excluded(tmp_path, capsys):
    base = torch.tensor([1.0, 2.0, float("nan"), 4.0, 5.0])
    ft = torch.tensor([1.0, 2.5, 3.0, float("inf"), 5.0])
    b = ckpt.save({"w": base}, tmp_path / "b.safetensors")
    f = ckpt.save({"w": ft}, tmp_path / "f.safetensors")
    with pytest.warns(UpdeltaWarning, match="non-finite"):
        r = updelta.diff(b, f, spectral="off")
    row = r.tensors.iloc[0]
    assert row["nonfinite_base"] == 1 and row["nonfinite_ft"] == 1 and row["n_compared"] == 3
    assert row["delta_fro"] == pytest.approx(0.5) and row["sparsity_exact"] == pytest.approx(2 / 3)
    assert row["base_fro"] == pytest.approx(math.sqrt(1 + 4 + 25))
    assert capsys.readouterr().err == ""  # library code does not print: the warning is on the Result
    assert len(r.warnings) == 1 and "non-finite" in r.warnings[0] and "w (f: base 1, ft 1)" in r.warnings[0]
    assert r.meta["warnings"] == r.warnings


def test_rel_delta_nan_when_base_is_zero(tmp_path):
    b = ckpt.save({"w": torch.zeros(4)}, tmp_path / "b.safetensors")
    f = ckpt.save({"w": torch.ones(4)}, tmp_path / "f.safetensors")
    row = updelta.diff(b, f, spectral="off").tensors.iloc[0]
    assert math.isnan(row["rel_delta"]) and math.isnan(row["cos_delta_base"]) and row["delta_fro"] == 2.0


def test_registry_documents_every_metric():
    for name in ["delta_fro", "base_fro", "rel_delta", "delta_max", "delta_mean_abs", "cos_delta_base",
                 "sparsity_exact", "sparsity_atol", "sparsity_rtol"]:
        m = REGISTRY[name]
        assert m.family == "elementwise" and "metrics.md" in m.reference and len(m.doc) > 10
