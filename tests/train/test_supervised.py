"""The shared training loop's pieces: gradient accumulation with each normalization, the schedule, the optimizer."""
from pathlib import Path

import pytest
import torch

from updelta.train import dft, sft
from updelta.train.batching import collate, micro_batches
from updelta.train.model import new_model
from updelta.train.optim import build_optimizer, lr_at
from updelta.train.supervised import accumulate_gradients
from updelta.train.tasks import addition

# one long and three short examples: the two micro-batches hold very different numbers of target tokens
EXAMPLES = [addition(9876, 5432), addition(1, 2), addition(3, 4), addition(5, 6)]


def _grads(objective, grad_accum):
    model, tokenizer = new_model(seed=0)
    micro = [collate(m, tokenizer) for m in micro_batches(EXAMPLES, grad_accum)]
    accumulate_gradients(model, micro, objective)
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("make", [lambda n: sft.objective(n), lambda n: dft.objective(
    dft.DFTOptions(out=Path("unused"), normalization=n), reference=None)])
def test_global_accumulation_equals_one_big_batch_and_microbatch_does_not(make):
    whole = _grads(make("global"), grad_accum=1)
    assert torch.allclose(_grads(make("global"), grad_accum=2), whole, atol=1e-7, rtol=1e-4)
    assert torch.allclose(_grads(make("microbatch"), grad_accum=1), whole, atol=1e-7, rtol=1e-4)
    assert not torch.allclose(_grads(make("microbatch"), grad_accum=2), whole, atol=1e-6, rtol=1e-2)


def test_schedule_warms_up_then_decays_to_zero():
    lrs = [lr_at(s, 100, 1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)      # 10% linear warm-up
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] < 1e-3   # cosine down to ~0


def test_weight_decay_skips_norm_weights():
    model, _ = new_model(seed=0)
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.01)
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    assert "lm_head.weight" in names and "model.layers.0.self_attn.q_proj.weight" in names
    assert not any("norm" in n for n in names)
    assert optimizer.defaults["betas"] == (0.9, 0.95)

