"""heatmap and run_similarity on planted tables and on a real compare result."""
from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

import updelta.plot as up
from plot_tables import LABELS, MODS, draw, finite, overlaps, planted_meta, planted_tensors, planted_value
from updelta.tables.aggregate import aggregate_pairs
from updelta.errors import UpdeltaError


def images(fig):
    return [ax for ax in fig.axes if ax.get_images()]


def test_heatmap_planted_values_layout_and_titles():
    runs = ("sft", "grpo")
    df = planted_tensors(layers=4, runs=runs)
    fig = up.heatmap(df, "rel_delta", meta=planted_meta(runs))
    assert isinstance(fig, Figure)
    axes = images(fig)
    assert [ax.get_title() for ax in axes] == list(runs)
    for ri, ax in enumerate(axes):
        arr = finite(ax.get_images()[0].get_array())
        assert arr.shape == (4, len(MODS))
        expected = np.array([[planted_value(ri, layer, j) for j in range(len(MODS))] for layer in range(4)])
        np.testing.assert_allclose(arr, expected)
        assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1", "2", "3"]
        # small grid: every cell annotated with its value
        texts = [t.get_text() for t in ax.texts]
        assert len(texts) == 4 * len(MODS) and f"{planted_value(ri, 0, 0):.2g}" in texts
    # shared colour scale, log because the values span > 100x
    # module labels under the bottom panel (panels share the x axis)
    assert [t.get_text() for t in axes[-1].get_xticklabels()] == LABELS
    norms = {(type(ax.get_images()[0].norm), ax.get_images()[0].norm.vmin, ax.get_images()[0].norm.vmax) for ax in axes}
    assert len(norms) == 1
    kind, vmin, vmax = norms.pop()
    assert kind is LogNorm
    assert vmin == pytest.approx(planted_value(0, 0, 3)) and vmax == pytest.approx(planted_value(1, 3, 0))
    title = fig._suptitle.get_text()
    assert "base-model" in title and "sft" in title and "grpo" in title and "rel_delta" in title
    cbar = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(cbar) == 1 and "W" in cbar[0].get_ylabel() and "log" in cbar[0].get_ylabel()
    # the head (no layer) is left out and said so
    assert any("without a layer" in t.get_text() for t in fig.texts)


def test_heatmap_linear_and_signed_scales():
    df = planted_tensors(layers=2)
    fig = up.heatmap(df, "rel_delta", meta=planted_meta(("sft", "grpo")), log=False, annotate=False)
    im = images(fig)[0].get_images()[0]
    assert not isinstance(im.norm, LogNorm) and not images(fig)[0].texts
    fig = up.heatmap(df, "cos_delta_base", meta=planted_meta(("sft", "grpo")))
    norm = images(fig)[0].get_images()[0].norm
    assert norm.vmin == pytest.approx(-norm.vmax)  # diverging, centred at 0
    assert images(fig)[0].get_images()[0].get_cmap().name.startswith("RdBu")


def test_heatmap_nan_cells_and_single_layer():
    df = planted_tensors(layers=2, runs=("only",))
    df.loc[(df["module"] == "k_proj") & (df["layer"] == 1), "rel_delta"] = math.nan
    fig = up.heatmap(df, "rel_delta", meta=planted_meta(("only",)))
    (ax,) = images(fig)
    mask = np.ma.getmaskarray(ax.get_images()[0].get_array())
    assert mask.shape == (2, len(MODS)) and mask[1, 1] and mask.sum() == 1  # only that cell is grey
    assert any("grey" in t.get_text() for t in fig.texts)
    # one layer, and a module with no value at all: its column is left out and the footnote says so
    one = df[df["layer"] == 1]
    fig = up.heatmap(one, "rel_delta", meta=planted_meta(("only",)))
    (ax,) = images(fig)
    assert ax.get_images()[0].get_array().shape == (1, len(MODS) - 1)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1"]
    assert "k" not in [t.get_text() for t in ax.get_xticklabels()]
    assert any("no rel_delta for k" in t.get_text() for t in fig.texts)
    # a table that is NaN everywhere still draws (all grey), with a linear scale
    one = one.assign(rel_delta=math.nan)
    fig = up.heatmap(one, "rel_delta")
    assert np.ma.getmaskarray(images(fig)[0].get_images()[0].get_array()).all()


def test_heatmap_80_layers_ticks_do_not_overlap():
    df = planted_tensors(layers=80, runs=("sft", "dft", "grpo"), head=False)
    fig = up.heatmap(df, "rel_delta", meta=planted_meta(("sft", "dft", "grpo")))
    draw(fig)
    axes = images(fig)
    assert len(axes) == 3 and finite(axes[0].get_images()[0].get_array()).shape == (80, len(MODS))
    assert not axes[0].texts  # too big to annotate
    assert [t for t in axes[0].get_yticklabels() if t.get_visible() and t.get_text()], "layer labels shown"
    assert [t for t in axes[-1].get_xticklabels() if t.get_visible() and t.get_text()], "module labels shown"
    for ax in axes:
        assert overlaps(fig, ax.get_yticklabels()) == []
        assert overlaps(fig, ax.get_xticklabels()) == []
    shown = [int(t.get_text()) for t in axes[0].get_yticklabels()]
    assert shown[0] == 0 and shown[-1] >= 70 and len(shown) >= 8


def test_heatmap_200_layers_still_thins_ticks():
    df = planted_tensors(layers=200, runs=("sft",), head=False)
    fig = up.heatmap(df, "rel_delta")
    draw(fig)
    (ax,) = images(fig)
    assert overlaps(fig, ax.get_yticklabels()) == [] and len(ax.get_yticklabels()) >= 20


def test_heatmap_biases_on_request():
    df = planted_tensors(layers=2, bias=True)
    fig = up.heatmap(df, "rel_delta", meta=planted_meta(("sft", "grpo")))
    assert "q bias" not in [t.get_text() for t in images(fig)[-1].get_xticklabels()]
    fig = up.heatmap(df, "rel_delta", meta=planted_meta(("sft", "grpo")), params=("weight", "bias"))
    labels = [t.get_text() for t in images(fig)[-1].get_xticklabels()]
    assert labels[:2] == ["q", "q bias"] and len(labels) == len(MODS) + 7


def test_heatmap_runs_filter_and_errors():
    df = planted_tensors(layers=2)
    fig = up.heatmap(df, "rel_delta", runs=["grpo"], meta=planted_meta(("sft", "grpo")))
    assert [ax.get_title() for ax in images(fig)] == ["grpo"]
    fig = up.heatmap(df[df["run"] == "sft"].drop(columns=["run"]), "rel_delta")  # hand-made, no run column
    assert [ax.get_title() for ax in images(fig)] == ["all"]
    with pytest.raises(UpdeltaError, match="not a column"):
        up.heatmap(df, "no_such_metric")
    with pytest.raises(UpdeltaError, match="not in the result"):
        up.heatmap(df, "rel_delta", runs=["nope"])
    with pytest.raises(UpdeltaError, match="Result or a pandas DataFrame"):
        up.heatmap([1, 2], "rel_delta")


def test_heatmap_real_result_and_cross_run_metric(real_compare):
    res = real_compare
    fig = up.heatmap(res, "sparsity_exact")
    axes = images(fig)
    assert [ax.get_title() for ax in axes] == ["sft", "dft", "grpo"]
    t = res.tensors
    want = t[(t["run"] == "dft") & (t["layer"] == 2) & (t["module"] == "up_proj")]["sparsity_exact"].item()
    col = [x.get_text() for x in axes[-1].get_xticklabels()].index("up")
    assert finite(axes[1].get_images()[0].get_array())[2, col] == pytest.approx(want)
    assert "exact" in fig.axes[-1].get_ylabel()  # colour bar names the convention
    fig = up.heatmap(res, "delta_cos")  # a pairs metric: one panel per pair of runs
    axes = images(fig)
    assert [ax.get_title() for ax in axes] == ["sft vs dft", "sft vs grpo", "dft vs grpo"]
    assert axes[0].get_images()[0].norm.vmin == pytest.approx(-axes[0].get_images()[0].norm.vmax)


def test_run_similarity_matrix_values_and_baselines(real_compare):
    res = real_compare
    ps = res.pairs_summary
    fig = up.run_similarity(res, "delta_cos")
    (ax,) = images(fig)
    m = finite(ax.get_images()[0].get_array())
    assert m.shape == (3, 3) and np.isnan(np.diag(m)).all()
    np.testing.assert_allclose(m, m.T, equal_nan=True)
    row = ps[(ps["run_a"] == "sft") & (ps["run_b"] == "grpo")].iloc[0]
    assert m[0, 2] == pytest.approx(row["delta_cos"])
    norm = ax.get_images()[0].norm
    assert (norm.vmin, norm.vmax) == (-1.0, 1.0)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["sft", "dft", "grpo"]
    assert any("random baseline: 0" in t.get_text() for t in fig.texts)

    fig = up.run_similarity(res, "jaccard_atol")
    (ax,) = images(fig)
    m = finite(ax.get_images()[0].get_array())
    assert m[0, 1] == pytest.approx(ps.iloc[0]["jaccard_atol"])
    texts = [t.get_text() for t in ax.texts]
    assert f"{ps.iloc[0]['jaccard_atol']:.3f}\n({ps.iloc[0]['jaccard_random_atol']:.3f})" in texts
    assert "atol" in fig._suptitle.get_text() and "1e-05" in fig._suptitle.get_text()

    fig = up.run_similarity(res, "overlap", conv="exact")  # asymmetric: row run is A
    m = finite(images(fig)[0].get_images()[0].get_array())
    assert m[0, 1] == pytest.approx(ps.iloc[0]["overlap_a_exact"])
    assert m[1, 0] == pytest.approx(ps.iloc[0]["overlap_b_exact"])


def test_run_similarity_of_a_slice_recombines(real_compare):
    res = real_compare
    mlp = res.pairs[res.pairs["component"] == "mlp"]
    fig = up.run_similarity(mlp, "delta_cos", meta=res.meta)
    m = finite(images(fig)[0].get_images()[0].get_array())
    want = aggregate_pairs(mlp, [])
    assert m[0, 1] == pytest.approx(want.iloc[0]["delta_cos"])
    pc = res.pairs_components
    assert m[0, 1] == pytest.approx(pc[(pc["component"] == "mlp") & (pc["run_a"] == "sft")
                                       & (pc["run_b"] == "dft")]["delta_cos"].item())


def test_run_similarity_needs_two_runs():
    import pandas as pd

    with pytest.raises(UpdeltaError, match="at least two runs"):
        up.run_similarity(pd.DataFrame(), "delta_cos")
    with pytest.raises(UpdeltaError, match="choose delta_cos"):
        up.run_similarity(pd.DataFrame(), "cosine")


def test_no_pyplot_state_and_rcparams_restored(real_compare):
    before = dict(matplotlib.rcParams)
    up.heatmap(real_compare, "rel_delta")
    up.run_similarity(real_compare)
    assert dict(matplotlib.rcParams) == before
    import sys
    plt = sys.modules.get("matplotlib.pyplot")
    assert plt is None or plt.get_fignums() == []
