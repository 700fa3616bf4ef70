"""Intruder dimensions read k and eps from `DiffOptions.intruder_k` / `intruder_eps` (defaults 10 and 0.5), both in
the engine's `spectral_columns` and in the registered definitions."""
from __future__ import annotations

import torch

from updelta.metrics import spectral as sp
from updelta.metrics.registry import REGISTRY
from updelta.options import DiffOptions


def _planted():
    """W0 with a clear spectrum and W1 = W0 + a strong random rank-one term (one intruder at eps 0.5)."""
    g = torch.Generator().manual_seed(7)
    m = n = 60
    U = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]
    s = torch.cat([torch.linspace(10, 5, 10, dtype=torch.float64), torch.linspace(1, 0.1, 50, dtype=torch.float64)])
    w0 = (U * s) @ V.T
    x, y = torch.randn(m, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)
    return w0, w0 + 30.0 * torch.outer(x / x.norm(), y / y.norm())


def test_defaults_are_the_published_choice():
    o = DiffOptions()
    assert (o.intruder_k, o.intruder_eps) == (10, 0.5)


def test_intruder_k_and_eps_come_from_the_options():
    w0, w1 = _planted()
    counts = {}
    for k, eps in ((10, 0.5), (10, 0.9), (10, 0.1), (1, 0.9), (3, 0.9)):
        o = DiffOptions(spectral="full", intruder_k=k, intruder_eps=eps)
        out = sp.spectral_columns(w0.float(), w1.float(), o)
        want = REGISTRY["intruders"](w0, w1, o)
        assert out["intruders"] == want, (k, eps)
        assert out["intruders_sweep"] == sp.spectral_columns(w0.float(), w1.float(), DiffOptions(
            spectral="full", intruder_k=k))["intruders_sweep"]  # the sweep does not depend on eps
        counts[k, eps] = want
    sweep = sp.spectral_columns(w0.float(), w1.float(), DiffOptions(spectral="full"))["intruders_sweep"]
    assert counts[10, 0.5] == 1 == sweep[4] and counts[10, 0.1] == sweep[0] == 0
    assert counts[10, 0.9] == sweep[8] and counts[10, 0.9] > counts[10, 0.5]  # a looser eps finds more
    assert counts[1, 0.9] == 1 and counts[3, 0.9] < counts[10, 0.9]  # fewer vectors tested, fewer found
