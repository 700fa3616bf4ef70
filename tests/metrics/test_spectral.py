"""Spectral and subspace metrics: planted spectra with closed-form values, float64 references,
`fast` against `full`, `full` against the registered definitions, float64 and the summary."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from updelta.metrics import spectral as sp
from updelta.metrics.linalg import topk_singular_values
from updelta.metrics.registry import REGISTRY
from updelta.options import DiffOptions

FAST = DiffOptions(spectral="fast")
FULL = DiffOptions(spectral="full")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # small LAPACK calls on a shared 2-core machine are faster and steadier on one thread
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def orth(m: int, r: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(m, r, generator=g, dtype=torch.float64))[0]


def planted(m: int, n: int, s, seed: int = 0) -> torch.Tensor:
    """U diag(s) V^T in float64 with random orthonormal U (m x r), V (n x r)."""
    s = torch.as_tensor(np.asarray(s, dtype=np.float64))
    r = s.numel()
    return (orth(m, r, seed) * s) @ orth(n, r, seed + 1000).T


def base(m: int, n: int, seed: int = 7) -> torch.Tensor:
    return torch.randn(m, n, generator=torch.Generator().manual_seed(seed)) * 0.02


def pair(m: int, n: int, s, seed: int = 0):
    w0 = base(m, n)
    w1 = (w0.double() + planted(m, n, s, seed)).float()
    return w0, w1


def exact_sv(w0, w1) -> np.ndarray:
    return torch.linalg.svdvals(w1.double() - w0.double()).numpy()


def rel(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.abs(b)))


# ---------------------------------------------------------------------------------------------
# fast mode: closed forms on planted spectra
# ---------------------------------------------------------------------------------------------

def test_fast_rank_r_closed_form():
    s = [5.0, 4.0, 3.0, 2.0, 1.0]
    w0, w1 = pair(400, 300, s)
    out = sp.spectral_columns(w0, w1, FAST)
    assert len(out["topk_sv"]) == 16
    assert rel(out["topk_sv"][:5], s) < 1e-3
    assert max(out["topk_sv"][5:]) < 1e-4 * 5  # beyond the rank: zeros up to float32 rounding of W0 + D
    assert out["stable_rank"] == pytest.approx(55 / 25, rel=1e-3)  # sum s^2 / s_1^2
    assert out["topk_energy"] == pytest.approx(1.0, rel=1e-4)
    # s^2 = 25, 16, 9, 4, 1 (total 55): 90% = 49.5 is first reached at 25+16+9 = 50; 99% = 54.45 at 55
    assert out["energy_rank_90"] == 3
    assert out["energy_rank_99"] == 5
    assert out["spectral_s"] > 0


def test_fast_flat_spectrum_energy_ranks_beyond_k():
    w0, w1 = pair(300, 256, [1.0] * 40)
    out = sp.spectral_columns(w0, w1, FAST)
    assert rel(out["topk_sv"], [1.0] * 16) < 1e-3
    assert out["stable_rank"] == pytest.approx(40.0, rel=1e-3)
    assert out["topk_energy"] == pytest.approx(16 / 40, rel=1e-3)
    assert out["energy_rank_90"] is None and out["energy_rank_99"] is None  # 36 and 40 > k = 16: "> k"
    out = sp.spectral_columns(w0, w1, DiffOptions(spectral="fast", topk=40))
    assert out["energy_rank_90"] == 36  # 0.9 * 40 equal values: exactly 36 (a tie, resolved to the tie)
    assert out["energy_rank_99"] == 40


def test_fast_geometric_decay_against_definition():
    s = 0.8 ** np.arange(200)
    w0, w1 = pair(512, 384, s, seed=3)
    out = sp.spectral_columns(w0, w1, FAST)
    assert rel(out["topk_sv"], s[:16]) < 1e-3
    e = s ** 2
    assert out["stable_rank"] == pytest.approx(e.sum() / e[0], rel=1e-3)
    assert out["topk_energy"] == pytest.approx(e[:16].sum() / e.sum(), rel=1e-4)
    c = np.cumsum(e) / e.sum()
    assert out["energy_rank_90"] == int(np.argmax(c >= 0.9)) + 1
    assert out["energy_rank_99"] == int(np.argmax(c >= 0.99)) + 1


@pytest.mark.parametrize("spectrum", ["gauss", "power", "sqrt", "linear"])
def test_krylov_solver_slow_spectra_within_1e3(spectrum):
    """The solver alone (no fallback to svdvals) on hard, slowly decaying spectra."""
    m, n = 1024, 768
    g = torch.Generator().manual_seed(11)
    if spectrum == "gauss":
        A = torch.randn(m, n, generator=g, dtype=torch.float64)
    else:
        i = np.arange(1, n + 1, dtype=np.float64)
        s = {"power": 1 / i, "sqrt": 1 / np.sqrt(i), "linear": 1 - (i - 1) / n}[spectrum]
        A = planted(m, n, s, seed=5)
    ref = torch.linalg.svdvals(A).numpy()[:16]
    res = topk_singular_values(A.float(), 16, fallback_exact=False, max_dim=700)
    assert not res.exact and res.converged
    assert res.dim < n
    err = rel(res.values, ref)
    assert err < 1e-3
    assert err <= 4 * res.err_est + 1e-5  # the reported estimate is honest (not wildly optimistic)
    # the stated error estimate is what the fast column reports
    assert np.all(np.diff(res.values) <= 0)


@pytest.mark.parametrize("spectrum, method", [("gauss", "gram"), ("power", "gram"), ("cubic", "krylov")])
def test_tall_matrices_gram_path_and_its_guard(spectrum, method):
    """Tall matrices use the Gram matrix of the short side unless its rounding estimate exceeds the tolerance
    (a steep decay, s_16 / s_1 = 16^-3 here), where the Krylov solver takes over; both within 1e-3."""
    m, n = 1500, 300
    if spectrum == "gauss":
        A = torch.randn(m, n, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    else:
        i = np.arange(1, n + 1, dtype=np.float64)
        A = planted(m, n, 1 / i if spectrum == "power" else 1 / i ** 3, seed=13)
    A32 = A.float()
    ref = torch.linalg.svdvals(A32.double()).numpy()[:16]
    for X in (A32, A32.T):  # wide inputs are transposed to tall
        res = topk_singular_values(X, 16)
        assert res.method == method
        assert rel(res.values, ref) < 1e-3
        assert res.err_est <= 2.5e-4


def test_krylov_rank_deficient_and_transpose():
    s = [3.0, 2.0, 1.0]
    A = planted(600, 500, s, seed=9).float()
    res = topk_singular_values(A, 16, exact_below=0)
    assert res.converged
    assert rel(res.values[:3], s) < 1e-5
    assert np.max(res.values[3:]) < 1e-5
    r1 = topk_singular_values(A, 8, exact_below=0)
    r2 = topk_singular_values(A.T.contiguous(), 8, exact_below=0)
    assert np.allclose(r1.values, r2.values, rtol=1e-4, atol=1e-5)


def test_frobenius_norm_accumulates_in_float64():
    d = (torch.randn(1 << 22, generator=torch.Generator().manual_seed(3)) * 1e-3 + 2e-3).reshape(2048, -1)
    want = float((d.double() ** 2).sum())
    assert sp._fro2(d) == pytest.approx(want, rel=1e-12)


def test_fast_is_deterministic():
    w0 = base(500, 400, seed=1)
    w1 = w0 + torch.randn(500, 400, generator=torch.Generator().manual_seed(2)) * 1e-3
    a = sp.spectral_columns(w0, w1, FAST)
    b = sp.spectral_columns(w0, w1, FAST)
    assert a["topk_sv"] == b["topk_sv"] and a["stable_rank"] == b["stable_rank"]


# ---------------------------------------------------------------------------------------------
# fast against full, full against the definitions
# ---------------------------------------------------------------------------------------------

def _update_with_gaps(m, n, seed):
    # a clear low-rank part (gapped spectrum) plus Gaussian noise: realistic and with stable energy ranks
    s = np.concatenate([[8, 6, 5, 4, 3.5, 3, 2.5, 2], np.full(60, 0.3)])
    return pair(m, n, s, seed=seed)


def test_fast_agrees_with_full():
    w0, w1 = _update_with_gaps(450, 320, seed=21)
    f = sp.spectral_columns(w0, w1, FAST)
    x = sp.spectral_columns(w0, w1, FULL)
    assert rel(f["topk_sv"], x["topk_sv"]) < 1e-3
    assert f["stable_rank"] == pytest.approx(x["stable_rank"], rel=2e-3)
    assert f["topk_energy"] == pytest.approx(x["topk_energy"], rel=2e-3)
    assert f["energy_rank_90"] == x["energy_rank_90"]
    assert f["energy_rank_99"] == x["energy_rank_99"]
    assert x["topk_sv_err_est"] == 0.0
    assert set(sp.FULL_COLUMNS) & set(f) == set()
    assert set(sp.FULL_COLUMNS) <= set(x)


@pytest.mark.parametrize("shape", [(160, 120), (96, 200)])
def test_full_matches_registered_definitions(shape):
    m, n = shape
    w0 = torch.randn(m, n, generator=torch.Generator().manual_seed(3)) * 0.05
    w1 = w0 + planted(m, n, [2.0, 1.0, 0.5], seed=4).float() * 0.05
    w1 = w1 + torch.randn(m, n, generator=torch.Generator().manual_seed(5)) * 1e-3
    w1[:10] = w0[:10]  # some unchanged elements for the off-principal mask
    opts = DiffOptions(spectral="full", topk=8, offprincipal_k=4, offprincipal_alpha=0.1)
    out = sp.spectral_columns(w0, w1, opts)
    defs = {name: m_ for name, m_ in REGISTRY.items() if m_.family.startswith("spectral")}
    assert set(defs) == {c for c in sp.FAST_COLUMNS if c != "topk_sv_err_est"} | set(sp.FULL_COLUMNS)
    for name, d in defs.items():
        assert d.doc and d.reference, name  # every definition carries its formula and source
        want = d(w0, w1, opts)
        got = out[name]
        if want is None:
            assert got is None, name
        elif isinstance(want, list):
            assert len(got) == len(want), name
            assert np.allclose(got, want, rtol=1e-4, atol=1e-5), name
        elif isinstance(want, int) and not isinstance(want, bool):
            assert got == want, name
        elif name.startswith("angle"):
            assert got == pytest.approx(want, rel=1e-3, abs=1e-2), name
        else:
            assert got == pytest.approx(want, rel=1e-4), name


# ---------------------------------------------------------------------------------------------
# full mode: closed forms
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(120, 100), (400, 60), (60, 400)])
def test_decomposition_parts_match_svd(shape):
    """The full mode's SVD parts (economy SVD near square; QR factor + svd(R) for tall and wide)."""
    m, n = shape
    r = min(m, n)
    s = np.linspace(3.0, 0.5, r)
    w = planted(m, n, s, seed=17).float()
    dec = sp.Decomp(w)
    assert dec.side == ("both" if m < 1.5 * n and n < 1.5 * m else ("v" if m > n else "u"))
    U, S, Vh = torch.linalg.svd(w.double(), full_matrices=False)
    assert np.allclose(dec.S.double(), S, rtol=1e-5)
    k = 5
    # singular vectors up to sign: compare |cosines|
    assert np.allclose((dec.u(k).double().T @ U[:, :k]).abs().diagonal(), 1, atol=1e-4)
    assert np.allclose((dec.vh(k).double() @ Vh[:k].T).abs().diagonal(), 1, atol=1e-4)
    Y = orth(m, 3, 18)
    assert np.allclose(dec.ut(Y.float()).double().abs(), (U.T @ Y).abs(), atol=1e-4)
    # numerically rank-deficient: the economy SVD instead (1 / s_i would be meaningless)
    w2 = planted(m, n, s[:r // 2], seed=19).float()
    assert sp.Decomp(w2).side == "both"


def test_full_rank_frac_and_erank_closed_form():
    w0, w1 = pair(64, 48, [1.0] * 7, seed=2)
    out = sp.spectral_columns(w0, w1, FULL)
    assert out["rank_frac"] == 7 / 48  # numerical rank 7 (float32 rounding stays below max(m,n) eps s_1)
    assert out["erank"] == pytest.approx(7.0, rel=1e-4)  # flat spectrum: erank = rank
    s = np.array([4.0, 2.0, 1.0, 1.0])
    w0, w1 = pair(64, 48, s, seed=3)
    p = s / s.sum()
    out = sp.spectral_columns(w0, w1, FULL)
    assert out["erank"] == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-4)
    assert out["rank_frac"] == 4 / 48


def test_full_nss_of_a_scaled_matrix():
    w0 = base(120, 80, seed=4)
    out = sp.spectral_columns(w0, w0 * 1.25, FULL)
    assert out["nss"] == pytest.approx(0.25, rel=1e-5)  # s(c W0) = c s(W0)
    # scaling changes no singular vector: every principal angle is zero and no intruder appears
    assert np.allclose(out["principal_cos_u"], 1.0, atol=1e-5)
    assert out["angle_u_max_deg"] < 0.05 and out["angle_v_max_deg"] < 0.05
    assert out["intruders"] == 0


@pytest.mark.parametrize("theta, f64", [(0.3, False), (1e-3, True)])
def test_full_principal_angles_planted_rotation(theta, f64):
    """W1 rotates the top-k left singular vectors of W0 by known angles theta_i toward lower ones."""
    m, n, r, k = 96, 80, 80, 4
    U = orth(m, r, 31)
    V = orth(n, r, 32)
    s = torch.linspace(10.0, 1.0, r, dtype=torch.float64)
    thetas = theta * np.array([1.0, 0.75, 0.5, 0.25])
    U1 = U.clone()
    for i, t in enumerate(thetas):  # Givens rotation of column i with column k + i
        a, b = U[:, i].clone(), U[:, k + i].clone()
        U1[:, i] = math.cos(t) * a + math.sin(t) * b
        U1[:, k + i] = -math.sin(t) * a + math.cos(t) * b
    w0 = ((U * s) @ V.T).float()
    w1 = ((U1 * s) @ V.T).float()
    opts = DiffOptions(spectral="full", topk=k, spectral_float64=f64)
    out = sp.spectral_columns(w0, w1, opts)
    tol = 1e-3 if f64 else 1e-4
    assert np.allclose(out["principal_cos_u"], np.sort(np.cos(thetas))[::-1], atol=tol * theta)  # descending
    assert out["angle_u_max_deg"] == pytest.approx(math.degrees(thetas[0]), rel=1e-2)
    assert out["angle_v_max_deg"] < 1e-2 * math.degrees(theta) + 1e-3  # right vectors unchanged


def test_full_intruder_dimension_planted():
    m, n = 200, 200
    s = np.concatenate([np.linspace(10, 5, 10), np.linspace(1, 0.1, 190)])
    U, V = orth(m, m, 41), orth(n, n, 42)
    w0 = (U * torch.as_tensor(s)) @ V.T
    g = torch.Generator().manual_seed(43)
    x = torch.randn(m, generator=g, dtype=torch.float64)
    y = torch.randn(n, generator=g, dtype=torch.float64)
    x, y = x / x.norm(), y / y.norm()
    # sanity of the construction: a random direction has max |cos| < 0.5 with every left vector of W0
    assert float((U.T @ x).abs().max()) < 0.5
    w1 = w0 + 30.0 * torch.outer(x, y)
    out = sp.spectral_columns(w0.float(), w1.float(), FULL)
    assert out["intruders"] == 1
    sweep = out["intruders_sweep"]
    assert len(sweep) == 9 and sweep == sorted(sweep)
    assert sweep[4] == out["intruders"]  # eps = 0.5 is the 5th of 0.1..0.9
    assert sweep[0] == 0  # no W1 vector is that far from every W0 vector (the intruder has max|cos| > 0.1)
    # the same update without the strong rank-one term: no intruder
    w1b = w0 + 1e-3 * torch.randn(m, n, generator=g, dtype=torch.float64)
    assert sp.spectral_columns(w0.float(), w1b.float(), FULL)["intruders"] == 0


def test_full_offprincipal_planted_masks():
    m, n, k = 100, 80, 3
    w0 = planted(m, n, [5.0, 3.0, 2.0], seed=51).float()  # rank 3 <= offprincipal_k: R = W0 itself
    opts = DiffOptions(spectral="full", offprincipal_k=k, offprincipal_alpha=0.05)
    a = w0.abs().reshape(-1).double()
    n_top = math.ceil(0.05 * m * n)  # 400
    order = torch.argsort(a, descending=True)
    top, rest = order[:n_top], order[n_top + 50:]  # leave a margin around the threshold

    def with_changes(idx):
        w1 = w0.clone().reshape(-1)
        w1[idx] += 1e-2
        return w1.reshape(m, n)

    assert sp.spectral_columns(w0, with_changes(top[:100]), opts)["offprincipal_overlap"] == pytest.approx(1.0)
    assert sp.spectral_columns(w0, with_changes(rest[:100]), opts)["offprincipal_overlap"] == pytest.approx(0.0)
    half = torch.cat([top[:60], rest[:60]])
    out = sp.spectral_columns(w0, with_changes(half), opts)
    assert out["offprincipal_overlap"] == pytest.approx(0.5)
    assert out["offprincipal_chance"] == 0.05


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_offprincipal_radix_select_matches_topk(dtype):
    g = torch.Generator().manual_seed(61)
    m, n = 150, 90
    w0 = torch.randn(m, n, generator=g, dtype=dtype)
    w1 = w0 + (torch.rand(m, n, generator=g, dtype=dtype) < 0.3) * 0.1
    U, S, Vh = torch.linalg.svd(w0, full_matrices=False)
    for alpha in (0.01, 0.05, 0.5):
        got = sp._offprincipal(w0, w1, U[:, :5], S[:5], Vh[:5], alpha)
        R = ((U[:, :5] * S[:5]) @ Vh[:5]).abs().reshape(-1)
        t = torch.topk(R, math.ceil(alpha * m * n)).values[-1]
        M = (w1 != w0).reshape(-1)
        want = float((M & (R >= t)).sum()) / float(M.sum())
        assert got == want


# ---------------------------------------------------------------------------------------------
# shapes, dtypes, degenerate inputs
# ---------------------------------------------------------------------------------------------

def test_vectors_and_scalars_return_empty():
    for mode in (FAST, FULL):
        assert sp.spectral_columns(torch.zeros(10), torch.ones(10), mode) == {}
        assert sp.spectral_columns(torch.tensor(1.0), torch.tensor(2.0), mode) == {}


def test_unchanged_tensor_follows_definitions():
    w0 = base(60, 40)
    out = sp.spectral_columns(w0, w0.clone(), FULL)
    assert out["topk_sv"] == [0.0] * 16 and out["energy_rank_90"] == 0 and out["rank_frac"] == 0.0
    assert out["stable_rank"] is None and out["topk_energy"] is None and out["erank"] is None
    assert out["offprincipal_overlap"] is None  # no changed element
    for name in ("nss", "principal_cos_u", "principal_cos_v", "intruders", "intruders_sweep"):
        want = REGISTRY[name](w0, w0.clone(), FULL)
        assert np.allclose(out[name], want, atol=1e-6), name


def test_non_finite_gives_nulls():
    w0 = base(50, 40)
    w1 = w0.clone()
    w1[3, 4] = float("nan")
    for mode in (FAST, FULL):
        out = sp.spectral_columns(w0, w1, mode)
        assert out["spectral_s"] >= 0
        assert all(v is None for c, v in out.items() if c != "spectral_s")


def test_orientation_left_is_output_side():
    """Transposing both weights swaps the left and right subspaces and keeps every spectrum."""
    w0 = base(90, 60, seed=71)
    w1 = w0 + planted(90, 60, [1.0, 0.5, 0.25], seed=72).float() * 0.05
    a = sp.spectral_columns(w0, w1, FULL)
    b = sp.spectral_columns(w0.T.contiguous(), w1.T.contiguous(), FULL)
    assert np.allclose(a["topk_sv"], b["topk_sv"], rtol=1e-5)
    assert np.allclose(a["principal_cos_u"], b["principal_cos_v"], atol=1e-5)
    assert a["angle_u_max_deg"] == pytest.approx(b["angle_v_max_deg"], abs=1e-2)


def test_float64_option():
    w0 = base(80, 60, seed=81)
    w1 = w0 + planted(80, 60, [1.0] * 5, seed=82).float() * 1e-2
    ref = exact_sv(w0, w1)
    f32 = sp.spectral_columns(w0, w1, FULL)
    f64 = sp.spectral_columns(w0, w1, DiffOptions(spectral="full", spectral_float64=True))
    assert rel(f64["topk_sv"][:5], ref[:5]) < 1e-12  # float64 SVD of the exactly widened inputs
    assert rel(f32["topk_sv"][:5], ref[:5]) < 1e-5
    # the rank tolerance is max(m, n) eps of the working dtype: float32 sees the planted rank 5, float64 also
    # sees the float32 rounding of W0 + D (about 1e-8 relative) as nonzero singular values
    assert f32["rank_frac"] == 5 / 60
    assert f64["rank_frac"] > 5 / 60
    assert f64["rank_frac"] == REGISTRY["rank_frac"](w0, w1, DiffOptions(spectral_float64=True))


def test_only_2d_tensors_have_spectral_columns():
    """Stacked experts arrive split into 2-D rows (updelta.families.experts); any other rank gets no spectral columns."""
    w0 = torch.stack([base(20, 10, seed=90 + e) for e in range(3)])
    assert sp.spectral_columns(w0, w0 + 1, DiffOptions(spectral="full")) == {}
    assert sp.spectral_columns(w0[0, 0], w0[0, 0] + 1, DiffOptions(spectral="fast")) == {}
    assert "stable_rank" in sp.spectral_columns(w0[0], w0[0] + 1, DiffOptions(spectral="fast"))


def test_columns_declared_with_kinds():
    w0, w1 = _update_with_gaps(120, 90, seed=5)
    outs = [sp.spectral_columns(w0, w1, FAST), sp.spectral_columns(w0, w1, FULL)]
    cols = list(sp.SPECTRAL_COLUMNS)
    assert cols[-1] == "spectral_s"
    for out in outs:
        assert set(out) <= set(cols)
        for c, v in out.items():
            kind = sp.SPECTRAL_COLUMNS[c]
            if v is None:
                continue
            if kind == "float":
                assert isinstance(v, float), c
            elif kind == "int":
                assert isinstance(v, int) and not isinstance(v, bool), c
            else:
                assert isinstance(v, list) and all(x is None or isinstance(x, (int, float)) for x in v), c


# ---------------------------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------------------------

def test_summarize_medians_over_2d_tensors():
    df = pd.DataFrame({
        "run": ["a"] * 5 + ["b"] * 2,
        "component": ["attn", "attn", "attn", "mlp", "norm", "attn", "norm"],
        "shape": ["8x8", "8x8", "8x8", "16x8", "8", "8x8", "8"],
        "stable_rank": [1.0, 2.0, 4.0, 8.0, np.nan, 5.0, np.nan],
        "energy_rank_90": [3, None, None, 2, None, 4, None],
        "intruders": [0, 1, 2, 3, None, 1, None],
        "spectral_s": [0.1, 0.1, 0.1, 0.2, np.nan, 0.3, np.nan],
    })
    df["energy_rank_90"] = df["energy_rank_90"].astype("Int64")
    s = sp.summarize(df, ["run", "component"]).set_index(["run", "component"])
    assert s.loc[("a", "attn"), "stable_rank"] == 2.0
    assert pd.isna(s.loc[("a", "attn"), "energy_rank_90"])  # 3, >k, >k: the median is "> k"
    assert s.loc[("a", "attn"), "intruders"] == 1
    assert s.loc[("a", "attn"), "n_spectral"] == 3 and s.loc[("a", "attn"), "n_spectral_skipped"] == 0
    assert s.loc[("a", "norm"), "n_spectral"] == 0 and s.loc[("a", "norm"), "n_spectral_skipped"] == 1
    assert pd.isna(s.loc[("a", "norm"), "stable_rank"])
    w = sp.summarize(df, ["run"]).set_index("run")
    assert w.loc["a", "stable_rank"] == 3.0  # median of 1, 2, 4, 8
    assert w.loc["a", "energy_rank_90"] == 3  # lower median of 2, 3, >k, >k
    assert w.loc["a", "n_spectral"] == 4 and w.loc["a", "n_spectral_skipped"] == 1
    assert w.loc["a", "spectral_s_total"] == pytest.approx(0.5)
    assert str(w["energy_rank_90"].dtype) == "Int64"
    one = sp.summarize(df, [])
    assert len(one) == 1 and one["n_spectral"].iloc[0] == 5


# ---------------------------------------------------------------------------------------------
# end to end: the engine and `updelta diff --spectral off|fast|full`
# ---------------------------------------------------------------------------------------------

def _run_cli(monkeypatch, capsys, *args):
    from clirun import run_main

    code, out, _ = run_main(monkeypatch, capsys, *args)
    return code, out


def test_cli_spectral_modes(monkeypatch, capsys, llama_pair, tmp_path):
    b, f, base, ft = llama_pair
    tabs = {}
    for mode in ("off", "fast", "full"):
        out_file = tmp_path / f"{mode}.parquet"
        code, out = _run_cli(monkeypatch, capsys, "diff", b, f, "--spectral", mode, "--out", out_file)
        assert code == 0
        tabs[mode] = pd.read_parquet(out_file).set_index("name")
        if mode != "off":
            assert "medians over 2-D tensors" in out
            comp = out.split("Per component")[1].split("\n\n")[0]
            assert "stable_rank" in comp and "r90" in comp  # rank figures per component
            assert "1-D tensors per run have no spectral figures" in out
    assert "stable_rank" not in tabs["off"] or tabs["off"]["stable_rank"].isna().all()
    for mode in ("fast", "full"):
        t = tabs[mode]
        two_d = [k for k, v in base.items() if v.ndim == 2]
        one_d = [k for k, v in base.items() if v.ndim == 1]
        assert t.loc[one_d, "stable_rank"].isna().all() and t.loc[one_d, "spectral_s"].isna().all()
        for name in two_d:  # the engine's rows are spectral_columns of the widened [out, in] weights
            want = sp.spectral_columns(base[name].float(), ft[name].float(), DiffOptions(spectral=mode))
            assert t.loc[name, "stable_rank"] == pytest.approx(want["stable_rank"], rel=1e-6)
            assert np.allclose(t.loc[name, "topk_sv"], want["topk_sv"], rtol=1e-6)
        if mode == "full":
            assert t.loc[two_d, "erank"].notna().all() and t.loc[two_d, "intruders"].notna().all()
        else:
            assert "erank" not in t or t["erank"].isna().all()


def test_engine_orients_gpt2_conv1d_left_as_output_side(tmp_path):
    import ckpt

    import updelta

    base = ckpt.gpt2_state()
    ft = ckpt.perturb(base, frac=1.0, scale=2e-2)
    r = updelta.diff(ckpt.save(base, tmp_path / "b"), ckpt.save(ft, tmp_path / "f"), spectral="full", topk=4)
    t = r.tensors.set_index("name")
    name = "transformer.h.0.mlp.c_fc.weight"  # Conv1D stored [in 16, out 64]
    w0, w1 = base[name].float().T.contiguous(), ft[name].float().T.contiguous()
    want = sp.spectral_columns(w0, w1, DiffOptions(spectral="full", topk=4))
    assert np.allclose(t.loc[name, "principal_cos_u"], want["principal_cos_u"], atol=1e-6)
    assert t.loc[name, "intruders"] == want["intruders"]
    assert np.allclose(t.loc[name, "intruders_sweep"], want["intruders_sweep"])


# ---------------------------------------------------------------------------------------------
# top-k vectors of W1 by subspace iteration (full mode), against exact float64 SVDs
# ---------------------------------------------------------------------------------------------

def _sin_max(A: torch.Tensor, B: torch.Tensor) -> float:
    """sin of the largest principal angle between the column spaces of orthonormal A, B."""
    A, B = A.double(), B.double()
    B = B / torch.linalg.vector_norm(B, dim=0)  # float32 columns are unit only to rounding
    return float(torch.linalg.svdvals(B - A @ (A.T @ B))[0])


@pytest.mark.parametrize("shape", [(420, 300), (300, 420)])
def test_topk_vectors_within_stated_bounds(shape):
    from updelta.metrics.linalg import VECTOR_FLOOR, VECTOR_RTOL, svdvals, topk_vectors

    m, n = shape
    s = 1.0 / np.arange(1, min(m, n) + 1) ** 1.2
    A64 = planted(m, n, s, seed=3)
    A = A64.float()
    U, S, Vh = torch.linalg.svd(A64, full_matrices=False)
    got = topk_vectors(A, 16, svdvals(A).double().numpy(), each=10)
    assert got is not None
    Uk, Sk, Vhk = got
    floor = VECTOR_FLOOR * torch.finfo(torch.float32).eps * s[0]
    sub = max(VECTOR_RTOL, floor / (s[15] - s[16]))
    assert _sin_max(U[:, :16], Uk) <= sub and _sin_max(Vh[:16].T, Vhk.T) <= sub
    for j in range(10):  # each of the first 10 left vectors on its own (intruders)
        gap = min(s[j - 1] - s[j] if j else np.inf, s[j] - s[j + 1])
        assert _sin_max(U[:, j:j + 1], Uk[:, j:j + 1]) <= max(VECTOR_RTOL, floor / gap)
    assert np.allclose(Sk.double().numpy(), s[:16], rtol=1e-5)


def test_topk_vectors_declines_a_flat_spectrum():
    from updelta.metrics.linalg import svdvals, topk_vectors

    A = base(420, 300, seed=5)  # Gaussian: Marchenko-Pastur edge, tiny gaps
    assert topk_vectors(A, 16, svdvals(A).double().numpy(), each=10) is None


@pytest.mark.parametrize("spectrum", ["flat", "power"])
def test_weyl_pretest_skips_only_hopeless_iterations(spectrum, monkeypatch):
    """W0's values -/+ ||D||_2 bound W1's (Weyl): where no W1 within them could pass the a-priori test, full mode
    goes straight to the exact SVD (no svdvals of W1 spent), and the columns are those of the old route."""
    from updelta.metrics import linalg as la

    w0 = base(420, 300, seed=5) if spectrum == "flat" else planted(420, 300, 1.0 / np.arange(1, 301) ** 1.2,
                                                                    seed=4).float()
    w1 = (w0.double() + planted(420, 300, [3e-3, 2e-3, 1e-3], seed=9)).float()
    s0 = la.svdvals(w0).double().numpy()
    dn = float(la.svdvals(w1 - w0).double()[0])
    may = la.topk_vectors_may_pay((420, 300), 16, s0 - dn, s0 + dn, torch.float32, each=10)
    exact = la.topk_vectors(w1, 16, la.svdvals(w1).double().numpy(), each=10)
    assert may is (spectrum == "power") and (exact is None) is (spectrum == "flat")
    calls = []
    real_svdvals = sp.svdvals
    monkeypatch.setattr(sp, "svdvals", lambda x: calls.append(tuple(x.shape)) or real_svdvals(x))
    got = sp.spectral_columns(w0, w1, FULL)
    assert len(calls) == (1 if spectrum == "flat" else 2)  # D only, or D and W1
    monkeypatch.setattr(sp, "topk_vectors_may_pay", lambda *a, **k: True)  # the route without the pre-test
    old = sp.spectral_columns(w0, w1, FULL)
    assert {k: v for k, v in got.items() if k != "spectral_s"} == {k: v for k, v in old.items() if k != "spectral_s"}


def test_full_columns_same_with_iterated_or_exact_vectors(monkeypatch):
    """The subspace-iteration route for W1's vectors gives the exact route's columns (power-law W0)."""
    s = 1.0 / np.arange(1, 301) ** 1.2
    w0 = planted(420, 300, s, seed=4).float()
    w1 = (w0.double() + planted(420, 300, [3e-2, 2e-2, 1e-2], seed=9)).float()
    got = sp.spectral_columns(w0, w1, FULL)
    import updelta.metrics.linalg as la
    calls = []
    real = la.topk_vectors
    monkeypatch.setattr(sp, "topk_vectors", lambda *a, **k: calls.append(1) or None)
    want = sp.spectral_columns(w0, w1, FULL)
    assert calls and real(w1, 16, la.svdvals(w1).double().numpy(), each=10) is not None  # both routes were taken
    assert np.allclose(got["principal_cos_u"], want["principal_cos_u"], atol=1e-4)
    assert np.allclose(got["principal_cos_v"], want["principal_cos_v"], atol=1e-4)
    assert got["angle_u_max_deg"] == pytest.approx(want["angle_u_max_deg"], abs=1e-2)
    assert got["intruders_sweep"] == want["intruders_sweep"]
    # sigma(W1) by svdvals instead of the SVD with vectors: both float32, within 1e-4 of the float64 definition
    assert got["nss"] == pytest.approx(sp.nss(w0, w1), rel=1e-4) and want["nss"] == pytest.approx(sp.nss(w0, w1), rel=1e-4)


@pytest.mark.parametrize("shape", [(9000, 96), (96, 9000)])
def test_long_update_values_by_row_blocks(shape, monkeypatch):
    """A long D's singular values from R built over row blocks of W1 - W0 (TSQR, D never formed whole) equal the
    float64 definition to float32 accuracy; the blocked R has the singular values of the one-shot QR's R."""
    from updelta.metrics import linalg as la

    monkeypatch.setattr(la, "TSQR_ROWS", 1000)  # 9000 rows: 9 blocks
    g = torch.Generator().manual_seed(3)
    w0 = torch.randn(*shape, generator=g) * 0.02
    w1 = w0 + torch.randn(*shape, generator=g) * 1e-3
    exact = torch.linalg.svdvals((w1.double() - w0.double())).numpy()
    got = sp._update_values(w0, w1).double().numpy()
    np.testing.assert_allclose(got, exact, rtol=2e-5)
    T = w1 - w0 if shape[0] > shape[1] else (w1 - w0).T
    blocked = torch.linalg.svdvals(la.tall_r(T)).double().numpy()
    one = torch.linalg.svdvals(torch.linalg.qr(T, mode="r").R).double().numpy()
    np.testing.assert_allclose(blocked, one, rtol=2e-5)
    ok, fro2 = sp._update_sums(w0, w1)
    assert ok and fro2 == pytest.approx(float(((w1 - w0).double() ** 2).sum()), rel=1e-12)  # float32 D, float64 sum
    bad = w1.clone()
    bad[5, 7] = float("nan")
    assert sp._update_sums(w0, bad)[0] is False
