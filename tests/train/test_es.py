"""Evolution strategies: exact restore after a perturbation, and one update against its closed form."""
import torch

from updelta.train.es import add_noise, es_update, restore, z_scores
from updelta.train.model import new_model


def _params():
    model, _ = new_model(seed=0)
    return [p.detach() for p in model.parameters()]


def test_perturb_then_restore_is_bit_identical():
    params = _params()
    original = [p.clone() for p in params]
    saved = [p.clone() for p in params]
    add_noise(params, seed=123, scale=1e-2)
    assert any(not torch.equal(p, o) for p, o in zip(params, original))
    restore(params, saved)
    assert all(torch.equal(p, o) for p, o in zip(params, original))


def test_subtracting_the_noise_back_does_not_restore():
    """Why `restore` copies: (theta + s*eps) - s*eps != theta in floating point for a share of the elements."""
    params = _params()
    original = [p.clone() for p in params]
    add_noise(params, seed=7, scale=1e-3)
    add_noise(params, seed=7, scale=-1e-3)
    changed = sum(int((p != o).sum()) for p, o in zip(params, original))
    total = sum(p.numel() for p in params)
    assert 0.001 < changed / total < 0.5


def test_noise_is_regenerated_identically_from_the_seed():
    a, b = _params(), _params()
    add_noise(a, seed=5, scale=1.0)
    add_noise(b, seed=5, scale=1.0)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_z_scores():
    z = z_scores([1.0, 2.0, 3.0, 2.0])
    assert torch.allclose(z, torch.tensor([-1.0, 0.0, 1.0, 0.0], dtype=torch.float64) / (0.5 ** 0.5), atol=1e-6)
    assert z_scores([0.5, 0.5, 0.5]).abs().max() == 0


def test_one_update_matches_the_closed_form():
    """theta' = theta + alpha/N * sum_n z_n eps_n, eps_n drawn tensor by tensor from seed n; no 1/sigma factor."""
    torch.manual_seed(0)
    params = [torch.randn(3, 4), torch.randn(5), torch.randn(2, 2)]
    theta = [p.clone() for p in params]
    seeds, rewards, alpha = [11, 22, 33], [0.25, 0.75, 0.5], 0.1
    z = z_scores(rewards)
    es_update(params, seeds, z, alpha)

    for i, (p, t) in enumerate(zip(params, theta)):
        expected = t.double().clone()
        for seed, z_n in zip(seeds, z.tolist()):
            g = torch.Generator().manual_seed(seed)
            eps = [torch.randn(q.shape, generator=g) for q in theta][i]   # tensor i of seed n's noise
            expected += alpha / len(seeds) * z_n * eps.double()
        assert torch.allclose(p.double(), expected, atol=1e-6)
    assert not torch.equal(params[0], theta[0])
