"""Figures at real scale, on synthetic tables (no checkpoints): every figure within 3000 px at 150 dpi for 1, 7 and
18 runs and 30 or 80 layers; no two labels overlap (measured with the renderer's extents); unchanged runs drawn
once, as a note, instead of empty panels."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.text import Text

import updelta.plot as up
from plot_tables import draw, overlaps
from scale_tables import RUNS, meta, pair_rows, tensors
from updelta.tables.aggregate import aggregate_pairs
from updelta.plot import common as C



def pairs(runs) -> pd.DataFrame:
    return aggregate_pairs(pair_rows(runs), [])


def size_px(fig) -> tuple[int, int]:
    w, h = fig.get_size_inches()
    return round(w * C.DPI), round(h * C.DPI)


def texts(fig) -> list:
    """Every text the renderer draws: titles, labels, tick labels, annotations, legends (subfigures too)."""
    out = []
    for f in (fig, *fig.subfigs):
        out += [t for t in f.findobj(match=Text) if t.get_visible() and t.get_text().strip()]
    return list(dict.fromkeys(out))


def bounded(fig) -> None:
    w, h = size_px(fig)
    assert max(w, h) <= C.MAX_PX, (w, h)
    draw(fig)  # the layout engine must manage: no collapsed axes
    for ax in fig.axes:
        if ax.get_visible() and ax.get_images():
            box = ax.get_window_extent()
            assert box.width > 5 and box.height > 5


@pytest.mark.parametrize("n, layers", [(1, 30), (18, 80)])  # 7 runs x 30 layers: tests/report/test_page.py
def test_every_figure_fits_3000_px(n, layers):
    runs = RUNS[n]
    df, m = tensors(runs, layers), meta(runs)
    figs = {"heatmap": up.heatmap(df, "rel_delta", meta=m), "profile": up.layer_profile(df, "rel_delta", meta=m),
            "spectrum": up.spectrum(df, meta=m), "distribution": up.distribution(df, meta=m)}
    if n > 1:
        figs["similarity"] = up.run_similarity(pairs(runs), "jaccard_atol", meta=m)
    summary = pd.DataFrame({"run": runs, "rel_delta": np.linspace(0.01, 0.2, n),
                            "gain_target_id": np.linspace(0.3, -0.1, n)})
    figs["tradeoff"] = up.tradeoff(summary, meta=m)
    for name, fig in figs.items():
        w, h = size_px(fig)
        assert max(w, h) <= C.MAX_PX, (name, n, layers, w, h)
    bounded(figs["heatmap"])
    if n == 18:  # the most crowded grid: 16 changed runs of 80 layers, still no label touches another
        assert len([ax for ax in figs["heatmap"].axes if ax.get_images()]) == 16
        assert not overlaps(figs["heatmap"], texts(figs["heatmap"]), pad=0.5)


def test_heatmap_grid_labels_every_panel_and_one_normal_colour_bar():
    runs = RUNS[7]
    fig = up.heatmap(tensors(runs, 30), "rel_delta", meta=meta(runs))
    draw(fig)
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert [ax.get_title() for ax in panels] == ["sft", "dft", "grpo", "es", "sft40"]  # unchanged: no panel
    for ax in panels:  # module names under every panel
        assert [t.get_text() for t in ax.get_xticklabels()][:3] == ["q", "k", "v"]
        assert all(t.get_visible() for t in ax.get_xticklabels())
    cbar = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(cbar) == 1
    height_in = cbar[0].get_window_extent().height / fig.dpi
    assert 2.5 <= height_in <= 4.5, height_in  # normal height, not the whole grid
    note = "\n".join(t.get_text() for t in fig.texts)
    assert "noop1, noop2: bit-identical to the base" in note
    assert not overlaps(fig, texts(fig))


def test_unchanged_runs_are_one_note_in_every_figure():
    runs = RUNS[7]
    df, m = tensors(runs, 30), meta(runs)
    for fig in (up.layer_profile(df, "rel_delta", meta=m), up.spectrum(df, meta=m), up.distribution(df, meta=m),
                up.run_similarity(pairs(runs), "delta_cos", meta=m)):
        note = "\n".join(t.get_text() for t in fig.texts)
        assert "noop1, noop2: bit-identical to the base" in note
        labels = [t.get_text() for f in (fig, *fig.subfigs) for lg in f.legends for t in lg.get_texts()]
        labels += [t.get_text() for ax in fig.axes for t in ax.get_xticklabels()]
        labels += [ax.get_title() for ax in fig.axes]
        assert not any("noop" in x for x in labels)  # no legend entry, panel or matrix row for them
    # only unchanged runs: one note, no empty panels
    fig = up.heatmap(df[df["run"].isin(["noop1", "noop2"])], "rel_delta", meta=meta(["noop1", "noop2"]))
    assert not [ax for ax in fig.axes if ax.get_images()]
    assert any("bit-identical to the base" in t.get_text() for ax in fig.axes for t in ax.texts)


def test_delta_cos_baseline_is_stated_once_not_per_cell():
    runs = RUNS[7]
    fig = up.run_similarity(pairs(runs), "delta_cos", meta=meta(runs))
    (ax,) = [a for a in fig.axes if a.get_images()]
    cells = [t.get_text() for t in ax.texts]
    assert cells and not any("rand" in c or "(" in c for c in cells)
    assert sum("random baseline: 0" in t.get_text() for t in fig.texts) == 1


def test_tradeoff_labels_never_collide():
    """Close points (sft40 right over es) and many runs: no two text boxes overlap, every run in the legend."""
    runs = RUNS[18]
    x = np.r_[0.100, 0.1003, 0.1006, np.linspace(0.01, 0.2, 15)]
    y = np.r_[0.20, 0.2004, 0.199, np.linspace(0.3, -0.1, 15)]
    summary = pd.DataFrame({"run": runs, "rel_delta": x, "gain_target_id": y, "gain_retention": -y / 10})
    fig = up.tradeoff(summary, meta=meta(runs))
    draw(fig)
    assert not overlaps(fig, texts(fig), pad=0.5)
    legend = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
    assert legend == runs
    placed = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "run00" in placed and len(placed) >= 18  # most labels find a free place
    # few runs: every point labelled
    fig = up.tradeoff(summary.head(3).assign(run=["sft40", "es", "sft"]), meta=meta(["sft40", "es", "sft"]))
    draw(fig)
    assert sorted(t.get_text() for ax in fig.axes for t in ax.texts) == sorted(["sft40", "es", "sft"] * 2)
    assert not overlaps(fig, texts(fig), pad=0.5)


def test_distribution_of_many_runs_is_one_panel_per_run():
    runs = RUNS[7]
    fig = up.distribution(tensors(runs, 4), meta=meta(runs))
    steps = [ax for ax in fig.axes if any(type(p).__name__ == "StepPatch" for p in ax.patches)]
    assert len(steps) == 5  # changed runs only; each panel draws one run (outline + fill)
    assert all(len([p for p in ax.patches if type(p).__name__ == "StepPatch"]) == 2 for ax in steps)
