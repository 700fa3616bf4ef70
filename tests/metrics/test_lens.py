"""The logit lens of the update (docs/metrics.md, Logit lens of the update) on planted updates.

A rank-1 update D = s (W_U[t] / ||W_U[t]||) (x) v of layer 1's o_proj of a tiny transformers model must make token
t the top promoted token of direction 0, with the score s <g * u, W_U[t]> computed here in float64 (g: the final
norm's weight, 1 + w for Gemma), for an untied head, a tied one (the embedding), and Gemma's norm; an adapter's
lens (from its factors) equals that of the merged float64 checkpoint.
"""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import updelta
from updelta.metrics import lens as ml
from updelta.options import DiffOptions

T, S = 17, 0.5
SMALL = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=32)


def _model(case):
    import transformers

    if case == "gemma":
        return transformers.GemmaForCausalLM(transformers.GemmaConfig(head_dim=8, **SMALL))
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(tie_word_embeddings=case == "tied", **SMALL))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """{case: (base, ft, expected float64 score, W_U float64, gain float64)}."""
    root = tmp_path_factory.mktemp("lens")
    out = {}
    for i, case in enumerate(("untied", "tied", "gemma")):
        torch.manual_seed(i)
        m = _model(case)
        with torch.no_grad():  # a final norm far from 1, so that the gain matters
            m.model.norm.weight.uniform_(0.5, 1.5)
        m.save_pretrained(root / case / "base")
        wu = (m.model.embed_tokens.weight if case != "untied" else m.lm_head.weight).detach().double()
        gain = m.model.norm.weight.detach().double() + (1.0 if case == "gemma" else 0.0)
        u = wu[T] / wu[T].norm()
        v = torch.randn(SMALL["hidden_size"], generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        v /= v.norm()
        with torch.no_grad():
            m.model.layers[1].self_attn.o_proj.weight += (S * torch.outer(u, v)).float()
        m.save_pretrained(root / case / "ft")
        out[case] = (root / case / "base", root / case / "ft", S * float((gain * u) @ wu[T]), wu, gain)
    return out


@pytest.mark.parametrize("case,mode", [("untied", "fast"), ("tied", "full"), ("gemma", "fast"), ("untied", "streamed")])
def test_planted_token_is_promoted_first(planted, case, mode, tmp_path):
    base, ft, expected, wu, gain = planted[case]
    streamed = dict(spectral="fast", max_memory="1") if mode == "streamed" else dict(spectral=mode)  # row blocks
    res = updelta.diff(base, ft, DiffOptions(progress=False, **streamed))
    note = res.meta["pairing"]["lens"]
    assert note["tied"] == (case != "untied") and note["norm_offset"] == (1.0 if case == "gemma" else 0.0)
    lens = res.lens
    assert set(lens["name"]) == {"model.layers.1.self_attn.o_proj.weight"}  # D = 0 elsewhere: no directions
    assert list(lens["direction"].unique()) == [0]  # rank 1: the rounding-floor directions are dropped
    d0 = lens[lens["sign"] == "promote"]
    assert int(d0.iloc[0]["token_id"]) == T and int(d0.iloc[0]["rank"]) == 0
    assert abs(d0.iloc[0]["score"] - expected) <= 1e-6 * abs(expected)
    assert abs(d0.iloc[0]["sigma"] - S) <= 1e-6 * S
    # every score is the float64 z = sigma (g * u) W_U^T of the planted direction, promoted descending
    z = (S * (gain * (wu[T] / wu[T].norm())) @ wu.T).numpy()
    np.testing.assert_allclose(d0["score"], np.sort(z)[::-1][:ml.TOP], rtol=1e-6, atol=1e-9)
    sup = lens[lens["sign"] == "suppress"]
    np.testing.assert_allclose(sup["score"], np.sort(z)[:ml.TOP], rtol=1e-6, atol=1e-9)
    assert list(sup["token_id"]) == list(np.argsort(z, kind="stable")[:ml.TOP])
    np.testing.assert_allclose(lens["score_mean"], z.mean(), rtol=1e-6)  # the same for every row of direction 0
    back = updelta.load(res.save(tmp_path / "out"))
    assert back.lens[["token_id", "score", "sign"]].equals(lens[["token_id", "score", "sign"]])


def test_lens_off(planted):
    base, ft, *_ = planted["untied"]
    for opts in (DiffOptions(spectral="off", progress=False), DiffOptions(lens_k=0, progress=False)):
        res = updelta.diff(base, ft, opts)
        assert res.lens.empty and "skipped" in res.meta["pairing"]["lens"]


def test_adapter_lens_from_factors_equals_the_merge(tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    m = _model("untied")
    m.save_pretrained(tmp_path / "base")
    pm = get_peft_model(m, LoraConfig(init_lora_weights=False, r=3, lora_alpha=6, target_modules=["o_proj"]))
    pm.save_pretrained(tmp_path / "adapter")
    merged = copy.deepcopy(pm).double().merge_and_unload()
    (tmp_path / "merged").mkdir()
    save_file({k: v.contiguous() for k, v in merged.state_dict().items()}, str(tmp_path / "merged" / "model.safetensors"))
    (tmp_path / "merged" / "config.json").write_text((tmp_path / "base" / "config.json").read_text())
    res = updelta.compare(tmp_path / "base", {"lora": tmp_path / "adapter", "merged": tmp_path / "merged"},
                          DiffOptions(progress=False, lens_k=2))
    a, b = (res.lens[res.lens["run"] == r].reset_index(drop=True) for r in ("lora", "merged"))
    assert len(a) == 2 * 2 * 2 * ml.TOP  # 2 layers, 2 directions, 10 promoted + 10 suppressed
    assert a["token_id"].tolist() == b["token_id"].tolist()
    np.testing.assert_allclose(a["score"], b["score"], rtol=1e-6)
    np.testing.assert_allclose(a["sigma"], b["sigma"], rtol=1e-6)


def test_randomized_directions_match_the_svd():
    g = torch.Generator().manual_seed(0)
    m, n = 300, 500
    U, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, m, generator=g, dtype=torch.float64))
    s = torch.cat([torch.tensor([10.0, 7.0, 5.0, 3.5]), 1.0 / torch.arange(1, m - 3, dtype=torch.float64)])
    d = (U * s) @ V.T
    got = ml.top_directions(d, 4)
    assert got.resid.max() <= ml.DIR_RTOL
    np.testing.assert_allclose(got.sigma, s[:4].numpy(), rtol=1e-6)
    cos = np.abs(np.sum(got.u * U[:, :4].numpy(), axis=0))
    assert cos.min() > 1 - 1e-6


def test_factored_directions_are_the_product_s():
    g = torch.Generator().manual_seed(1)
    L, R = torch.randn(40, 3, generator=g, dtype=torch.float64), torch.randn(3, 30, generator=g, dtype=torch.float64)
    got = ml.factored_directions(L, R, -0.7, 5)
    U, s, _ = torch.linalg.svd(-0.7 * L @ R)
    assert got.sigma.size == 3
    np.testing.assert_allclose(got.sigma, s[:3].numpy(), rtol=1e-12)
    assert np.abs(np.sum(got.u * U[:, :3].numpy(), axis=0)).min() > 1 - 1e-12


def test_sign_convention_and_streamed_candidates():
    ids = np.array([3, 5, 8, 9])
    sign, _ = ml.finish(ids, np.array([1.0, -4.0, 2.0, 4.0]), top=2)
    assert sign == -1  # |-4| ties |4|: the lower id (5) decides
    sign, _ = ml.finish(ids, np.array([1.0, -2.0, 2.0, 4.0]), top=2)
    assert sign == 1
    sign, rows = ml.finish(ids, np.array([1.0, -4.0, 2.0, 3.0]), top=2)
    assert sign == -1 and rows[0] == ("promote", 0, 5, 4.0) and rows[2] == ("suppress", 0, 9, -3.0)
    z = torch.randn(1000, 3, generator=torch.Generator().manual_seed(2))
    c = ml.Candidates(3, 7)
    for r0 in range(0, 1000, 128):
        c.add(z[r0:r0 + 128], r0)
    for j, got in enumerate(c.rows()):
        want = set(torch.topk(z[:, j], 7).indices.tolist()) | set(torch.topk(-z[:, j], 7).indices.tolist())
        assert set(got.tolist()) == want


@pytest.mark.parametrize("shape", [(300, 700), (700, 300)])
def test_gram_directions_of_tall_and_wide_updates(shape):
    """Aspect >= 2 (down_proj): the short-side Gram route, float32 D, against a float64 SVD; a flat spectrum behind
    the planted directions, where the subspace iteration would run all its steps."""
    g = torch.Generator().manual_seed(2)
    m, n = shape
    r = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, r, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64))
    s = torch.cat([torch.tensor([10.0, 7.0, 5.0, 3.5]), torch.full((r - 4,), 1.0)])
    d = ((U * s) @ V.T).float()
    got = ml.top_directions(d, 4)
    np.testing.assert_allclose(got.sigma, s[:4].numpy(), rtol=1e-5)
    assert np.abs(np.sum(got.u * U[:, :4].numpy(), axis=0)).min() > 1 - 1e-6
    assert got.resid.max() <= 1e-5  # from D itself, not from the Gram matrix
