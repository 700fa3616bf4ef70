"""Row/column energies and concentration columns, streamed, against closed forms and float64 definitions; top
neurons and token rows; gates on concentration columns (docs/metrics.md, Where an update sits)."""
from __future__ import annotations

import json

import pytest
import torch

import ckpt
import updelta
from updelta.errors import UpdeltaError
from updelta.report.gates import evaluate, parse_gate
from updelta.metrics import REGISTRY
from updelta.metrics import concentration  # noqa: F401  (registers the definitions)

NAMES = ("row_top1_share", "row_top10_share", "row_gini", "rows_for_90", "col_top1_share", "col_top10_share",
         "col_gini", "cols_for_90")


def _diff(tmp_path, w0, w1, **kw):
    b = ckpt.save({"w": w0}, tmp_path / "b.safetensors")
    f = ckpt.save({"w": w1}, tmp_path / "f.safetensors")
    return updelta.diff(b, f, spectral="off", **kw)


def test_one_percent_of_rows_carry_everything(tmp_path):
    w0 = torch.randn(300, 40, generator=torch.Generator().manual_seed(0)) * 0.05
    w1 = w0.clone()
    w1[[7, 100, 250]] += 0.01  # 3 of 300 rows: 1%
    row = _diff(tmp_path, w0, w1, block_elems=97).tensors.iloc[0]
    assert row["row_top1_share"] == pytest.approx(1.0, abs=1e-12)
    assert row["rows_for_90"] == 3
    assert row["col_top1_share"] == pytest.approx(1 / 40, rel=1e-3)  # every column moved alike (up to rounding)


def test_uniform_update_has_the_row_fraction_and_no_gini(tmp_path):
    w0 = torch.zeros(200, 50)
    w1 = torch.full((200, 50), 0.25)  # exact in float32: every energy equal
    row = _diff(tmp_path, w0, w1, block_elems=333).tensors.iloc[0]
    assert row["row_top1_share"] == pytest.approx(0.01, abs=1e-12)
    assert row["row_top10_share"] == pytest.approx(0.10, abs=1e-12)
    assert row["col_top10_share"] == pytest.approx(0.10, abs=1e-12)
    assert row["row_gini"] == pytest.approx(0.0, abs=1e-12) and row["col_gini"] == pytest.approx(0.0, abs=1e-12)
    assert row["rows_for_90"] == 180 and row["cols_for_90"] == 45


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_streamed_equals_definitions(tmp_path, dtype):
    g = torch.Generator().manual_seed(3)
    w0 = (torch.randn(37, 53, generator=g) * 0.05).to(dtype)
    mask = torch.rand(37, 53, generator=g) < 0.3
    w1 = (w0.float() + torch.randn(37, 53, generator=g) * 1e-2 * mask * torch.rand(37, 1, generator=g)).to(dtype)
    row = _diff(tmp_path, w0, w1, block_elems=64).tensors.iloc[0]  # many blocks, most ending mid-row
    for name in NAMES:
        # D is the float32 difference of the widened values (docs/metrics.md); the definition subtracts in float64
        assert row[name] == pytest.approx(REGISTRY[name](w0, w1), rel=1e-6), name


def test_neurons_tokens_and_gates(tmp_path):
    base = ckpt.llama_state(dtype=torch.float32)
    ft = {k: v.clone() for k, v in base.items()}
    ft["model.layers.1.mlp.down_proj.weight"][:, 5] += 0.02  # down_proj: neuron = column 5
    ft["model.layers.1.mlp.up_proj.weight"][[3, 9]] += torch.tensor([[0.01], [0.03]])  # up: rows 3, 9
    ft["model.embed_tokens.weight"][11] += 0.05  # token 11
    b, f = ckpt.save(base, tmp_path / "base"), ckpt.save(ft, tmp_path / "ft")
    from tokenizers import Tokenizer, models

    vocab = {f"tok{i}": i for i in range(40)}
    Tokenizer(models.WordLevel(vocab, unk_token="tok0")).save(str(b / "tokenizer.json"))
    res = updelta.diff(b, f, spectral="off", top_neurons=3)
    n = res.neurons
    down = n[n["module"] == "down_proj"]
    assert down["axis"].iloc[0] == "col" and down["index"].iloc[0] == 5
    assert down["energy_share"].iloc[0] == pytest.approx(1.0)
    up = n[n["module"] == "up_proj"].sort_values("rank")
    assert up["index"].tolist() == [9, 3] and up["energy_share"].iloc[0] == pytest.approx(0.9, rel=1e-5)
    tok = n[n["kind"] == "token"]
    assert tok["index"].tolist() == [11] and tok["token"].tolist() == ["tok11"]
    assert (n.groupby(["run", "name"]).size() <= 3).all()
    # gates on a concentration column take an explicit aggregate
    gr = evaluate(res, parse_gate("max:row_top1_share<=0.5@component=mlp"))
    assert not gr.passed and {o["name"] for o in gr.offenders} == {"model.layers.1.mlp.up_proj.weight"}
    assert evaluate(res, parse_gate("min:cols_for_90<=1@component=mlp")).passed
    with pytest.raises(UpdeltaError, match="AGG"):
        parse_gate("row_top1_share<=0.5")
    # medians in the aggregates; off switch
    assert res.summary["row_top1_share"].notna().all()
    off = updelta.diff(b, f, spectral="off", where=False)
    assert off.neurons.empty and "row_gini" not in off.tensors.columns
    assert json.loads(json.dumps(off.meta["options"]))["where"] is False
