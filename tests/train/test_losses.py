"""The SFT/DFT/ASFT losses: gradient identities, closed forms, masking and the two normalizations."""
import math

import pytest
import torch

from updelta.train.losses import IGNORE, asft_loss, dft_loss, kl_to_reference, sft_loss


def _case(seed=0, B=3, T=5, V=7):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, :2] = IGNORE
    labels[2, 3:] = IGNORE
    return logits, labels


def _grad(loss_fn, logits, labels, **kw):
    logits = logits.clone().requires_grad_(True)
    loss_fn(logits, labels, **kw).backward()
    return logits.grad


def _expected_grad(logits, labels, weight_fn):
    """Per token: weight * (softmax - onehot) / number of scored tokens; zero on ignored positions."""
    probs = logits.float().softmax(-1).double()
    mask = labels != IGNORE
    onehot = torch.nn.functional.one_hot(labels.clamp(min=0), logits.shape[-1]).double()
    p_target = (probs * onehot).sum(-1, keepdim=True)
    return weight_fn(p_target) * (probs - onehot) * mask.unsqueeze(-1) / mask.sum()


def test_dft_gradient_is_p_target_times_softmax_minus_onehot():
    logits, labels = _case()
    got = _grad(dft_loss, logits, labels)
    assert torch.allclose(got.double(), _expected_grad(logits, labels, lambda p: p), atol=1e-6)


def test_sft_gradient_is_softmax_minus_onehot():
    logits, labels = _case(1)
    got = _grad(sft_loss, logits, labels)
    assert torch.allclose(got.double(), _expected_grad(logits, labels, lambda p: torch.ones_like(p)), atol=1e-6)


def test_uniform_logits_closed_forms():
    V = 11
    logits = torch.zeros(2, 4, V)
    labels = torch.tensor([[1, 2, IGNORE, IGNORE], [3, 4, 5, 6]])
    assert sft_loss(logits, labels).item() == pytest.approx(math.log(V), rel=1e-6)
    assert dft_loss(logits, labels).item() == pytest.approx(math.log(V) / V, rel=1e-6)
    # every sequence-level weight is (1/V)^n for `sequence`, 1/V for `geometric`
    seq = dft_loss(logits, labels, weighting="sequence").item()
    assert seq == pytest.approx((2 * V ** -2 * math.log(V) + 4 * V ** -4 * math.log(V)) / 6, rel=1e-5)
    assert dft_loss(logits, labels, weighting="geometric").item() == pytest.approx(math.log(V) / V, rel=1e-6)


def test_prob_floor_raises_small_weights():
    logits, labels = _case(2)
    assert dft_loss(logits, labels, prob_floor=1.0).item() == pytest.approx(sft_loss(logits, labels).item())
    assert dft_loss(logits, labels, prob_floor=0.0).item() == pytest.approx(dft_loss(logits, labels).item())
    assert dft_loss(logits, labels, prob_floor=0.2).item() > dft_loss(logits, labels).item()


def test_ignored_positions_get_no_loss_and_no_gradient():
    logits, labels = _case(3)
    changed = logits.clone()
    changed[labels == IGNORE] += 100.0
    for fn in (sft_loss, dft_loss):
        assert fn(changed, labels).item() == pytest.approx(fn(logits, labels).item())
        assert _grad(fn, logits, labels)[labels == IGNORE].abs().max() == 0
    empty = torch.full_like(labels, IGNORE)
    assert dft_loss(logits, empty).item() == 0.0  # finite, not 0/0


def test_loss_is_computed_in_float32_from_bf16_logits():
    logits, labels = _case(4)
    loss = dft_loss(logits.bfloat16(), labels)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(dft_loss(logits.bfloat16().float(), labels).item(), rel=1e-6)


@pytest.mark.parametrize("fn", [sft_loss, dft_loss])
def test_normalizations_on_uneven_micro_batches(fn):
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 6, 9, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 9, (4, 6), generator=g)
    labels[:2, 1:] = IGNORE                 # micro-batch 1: 2 tokens; micro-batch 2: 12 tokens
    parts = [(logits[:2], labels[:2]), (logits[2:], labels[2:])]
    counts = [int((lab != IGNORE).sum()) for _, lab in parts]
    assert counts == [2, 12]
    means = [fn(lg, lab).item() for lg, lab in parts]

    glob = sum(fn(lg, lab, normalization="global", num_items=sum(counts)).item() for lg, lab in parts)
    micro = sum(fn(lg, lab, normalization="microbatch", num_micro_batches=2).item() for lg, lab in parts)
    assert glob == pytest.approx(fn(logits, labels).item())                       # token mean of the whole batch
    assert glob == pytest.approx((means[0] * 2 + means[1] * 12) / 14)
    assert micro == pytest.approx((means[0] + means[1]) / 2)                         # mean of micro-batch means
    assert abs(glob - micro) > 1e-3

    # gradients: global gives every token 1/14, microbatch 1/(2*2) and 1/(2*12)
    g_glob = torch.cat([_grad(fn, lg, lab, num_items=14) for lg, lab in parts])
    g_micro = torch.cat([_grad(fn, lg, lab, normalization="microbatch", num_micro_batches=2) for lg, lab in parts])
    assert torch.allclose(g_glob, _grad(fn, logits, labels))
    assert torch.allclose(g_micro[:2] * 4, g_glob[:2] * 14) and torch.allclose(g_micro[2:] * 24, g_glob[2:] * 14)


def test_asft_is_dft_plus_weighted_kl_anchor():
    logits, labels = _case(6)
    assert asft_loss(logits, labels, logits).item() == pytest.approx(dft_loss(logits, labels).item())
    ref = logits + torch.randn_like(logits)
    kl = kl_to_reference(logits, ref, labels)
    assert (kl >= -1e-9).all() and kl.sum() > 0
    mask = labels != IGNORE
    expected = dft_loss(logits, labels).item() + 0.3 * (kl.sum() / mask.sum()).item()
    assert asft_loss(logits, labels, ref, anchor_weight=0.3).item() == pytest.approx(expected)
    # the anchor's gradient w.r.t. the logits is softmax(policy) - softmax(ref), per scored token
    g = _grad(asft_loss, logits, labels, ref_logits=ref, anchor_weight=1.0) - _grad(dft_loss, logits, labels)
    expected_g = (logits.softmax(-1) - ref.softmax(-1)) * mask.unsqueeze(-1) / mask.sum()
    assert torch.allclose(g.double(), expected_g, atol=1e-6)
