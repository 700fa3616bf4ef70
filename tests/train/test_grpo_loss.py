"""GRPO's pieces on hand-computed cases: group advantages, the clipped objective, the k3 KL and each aggregation."""
import math

import pytest
import torch

from updelta.train.grpo import until_end
from updelta.train.losses import aggregate, clipped_fraction, group_advantages, grpo_per_token_loss


def test_group_advantages_hand_computed():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 3.0]])
    adv = group_advantages(rewards)
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)                     # unbiased std of [1, 0, 0, 1] is sqrt(1/3)
    assert adv[0].tolist() == pytest.approx([a, -a, -a, a])
    assert adv[1].tolist() == [0.0, 0.0, 0.0, 0.0]           # a group that agrees teaches nothing (and is not NaN)
    assert adv[2].tolist() == pytest.approx([-0.75 / (1.5 + 1e-4)] * 3 + [2.25 / (1.5 + 1e-4)])
    assert group_advantages(rewards, scale=False)[2].tolist() == pytest.approx([-0.75, -0.75, -0.75, 2.25])


def _loss_and_grad(ratio, adv, **kw):
    logp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    loss = grpo_per_token_loss(logp, torch.zeros(1, 1), torch.tensor([adv]), **kw)
    loss.sum().backward()
    return loss.item(), logp.grad.item()


@pytest.mark.parametrize("ratio, adv, loss, clipped", [
    (1.5, 1.0, -1.2, True),     # above 1 + eps_high with A > 0: capped, no gradient
    (0.5, 1.0, -0.5, False),    # below the range with A > 0: the unclipped term is the min
    (0.5, -1.0, 0.8, True),     # below 1 - eps_low with A < 0: capped
    (1.5, -1.0, 1.5, False),    # above the range with A < 0: unclipped (pessimistic bound)
    (1.25, 1.0, -1.25, False),  # inside [0.8, 1.28] with the asymmetric DAPO range
])
def test_clipped_objective_hand_computed(ratio, adv, loss, clipped):
    got, grad = _loss_and_grad(ratio, adv, eps_low=0.2, eps_high=0.28 if ratio == 1.25 else 0.2)
    assert got == pytest.approx(loss)
    assert (grad == 0.0) == clipped
    if not clipped:
        assert grad == pytest.approx(-adv * ratio)           # d(-rho * A)/d(logp) = -rho * A


def test_clip_fraction_counts_only_the_active_side():
    logp = torch.log(torch.tensor([[1.5, 0.5, 0.5, 1.5]]))
    old = torch.zeros(1, 4)
    mask = torch.tensor([[True, True, True, False]])
    assert clipped_fraction(logp, old, torch.tensor([1.0]), mask) == pytest.approx(1 / 3)
    assert clipped_fraction(logp, old, torch.tensor([-1.0]), mask) == pytest.approx(2 / 3)


def test_k3_kl_penalty():
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.0, -2.0 + math.log(2.0)]])
    zero_adv = torch.tensor([0.0])
    loss = grpo_per_token_loss(logp, logp, zero_adv, ref_logp=ref, beta=0.5)
    assert loss[0, 0].item() == pytest.approx(0.0, abs=1e-7)
    assert loss[0, 1].item() == pytest.approx(0.5 * (2.0 - math.log(2.0) - 1.0))
    assert grpo_per_token_loss(logp, logp, zero_adv, ref_logp=ref, beta=0.0).abs().max() == 0


PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0]])
MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]]).bool()     # 3 and 1 completion tokens; 9s are padding


@pytest.mark.parametrize("aggregation, expected", [
    ("grpo", (6 / 3 + 4 / 1) / 2),   # per-sequence means, then their mean
    ("bnpo", 10 / 4),                # token mean of the micro-batch
    ("dapo", 10 / 8),                # token sum / tokens of the whole accumulated batch (8 here)
    ("dr_grpo", 10 / (2 * 5)),       # token sum / (sequences * max completion length 5)
])
def test_aggregations_hand_computed(aggregation, expected):
    got = aggregate(PER_TOKEN, MASK, aggregation, num_items=8, max_completion_length=5)
    assert got.item() == pytest.approx(expected)


@pytest.mark.parametrize("aggregation", ["grpo", "bnpo", "dr_grpo"])
def test_aggregations_average_over_micro_batches(aggregation):
    one = aggregate(PER_TOKEN, MASK, aggregation, max_completion_length=5).item()
    two = aggregate(PER_TOKEN, MASK, aggregation, num_micro_batches=2, max_completion_length=5).item()
    assert two == pytest.approx(one / 2)


def test_dapo_is_the_token_mean_of_the_accumulated_batch():
    parts = [(PER_TOKEN[:1], MASK[:1]), (PER_TOKEN[1:], MASK[1:])]
    total = sum(aggregate(p, m, "dapo", num_items=4).item() for p, m in parts)
    assert total == pytest.approx(aggregate(PER_TOKEN, MASK, "bnpo").item())
    bnpo = sum(aggregate(p, m, "bnpo", num_micro_batches=2).item() for p, m in parts)
    assert bnpo == pytest.approx((6 / 3 + 4 / 1) / 2) and bnpo != pytest.approx(total)


def test_completion_mask_stops_after_the_first_end_token():
    end, pad = 2, 0
    completion = torch.tensor([[7, 8, end, pad, pad], [7, end, 9, end, pad], [7, 8, 9, 9, 9]])
    assert until_end(completion, end).tolist() == [[True, True, True, False, False],
                                                   [True, True, False, False, False],
                                                   [True, True, True, True, True]]
