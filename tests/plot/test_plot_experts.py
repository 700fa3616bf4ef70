"""The layer x expert heatmap (`updelta.plot.experts_heatmap`, `updelta plot --kind experts`) on a real tiny
mixture-of-experts diff with one planted expert (tests/moe.py)."""
from __future__ import annotations

import numpy as np
import pytest

import moe
import updelta
import updelta.plot as up
from clirun import run_main
from updelta.errors import UpdeltaError

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def moe_result(tmp_path_factory):
    b = moe.build("qwen2_moe", tmp_path_factory)
    return b, updelta.compare(b.per_expert, {"a": b.planted, "b": b.per_expert}, spectral="off")


def images(fig):
    return [ax for ax in fig.axes if ax.get_images()]


def test_experts_heatmap_cells_are_the_experts_table(moe_result):
    b, r = moe_result
    fig = up.experts_heatmap(r, "delta_fro")
    axes = images(fig)
    assert [ax.get_title() for ax in axes] == ["a", "b"]
    for run, ax in zip(("a", "b"), axes):
        arr = np.ma.filled(ax.get_images()[0].get_array(), np.nan)
        ex = r.experts[r.experts["run"] == run]
        assert arr.shape == (ex["layer"].nunique(), moe.E)
        want = ex.pivot(index="layer", columns="expert", values="delta_fro").to_numpy()
        np.testing.assert_array_equal(arr, want)
        assert [t.get_text() for t in ax.get_xticklabels()] == [str(e) for e in range(moe.E)]
    a = np.ma.filled(axes[0].get_images()[0].get_array(), np.nan)
    assert a[b.layer, 1] > 0 and np.count_nonzero(a) == 1  # only the planted expert moved
    # the same figure from the per-tensor table
    again = up.experts_heatmap(r.tensors, "delta_fro", meta=r.meta)
    np.testing.assert_array_equal(np.ma.filled(images(again)[0].get_images()[0].get_array(), np.nan), a)


def test_experts_heatmap_bad_input(moe_result):
    _, r = moe_result
    with pytest.raises(UpdeltaError, match="not a column of the experts table"):
        up.experts_heatmap(r, "no_such_metric")
    dense = r.tensors[r.tensors["expert"].isna()]
    with pytest.raises(UpdeltaError, match="no routed-expert rows"):
        up.experts_heatmap(dense, meta=r.meta)


def test_plot_cli_experts_writes_the_png(moe_result, tmp_path, monkeypatch, capsys):
    _, r = moe_result
    r.save(tmp_path / "res")
    out = tmp_path / "experts.png"
    code, stdout, err = run_main(monkeypatch, capsys, "plot", tmp_path / "res", "--kind", "experts", "--out", out)
    assert code == 0, err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    code, _, err = run_main(monkeypatch, capsys, "plot", tmp_path / "res", "--kind", "experts", "-m", "nope",
                            "--out", tmp_path / "x.png")
    assert code == 2 and len(err.strip().splitlines()) == 1 and not (tmp_path / "x.png").exists()
