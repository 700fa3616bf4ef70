"""layer_profile, spectrum, distribution, tradeoff, with_evals and savefig."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

import updelta
import updelta.plot as up
from plot_tables import draw, overlaps, planted_meta, planted_tensors, planted_value
from updelta.errors import UpdeltaError


def data_axes(fig):
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


# ---- layer_profile ---------------------------------------------------------------------------------
def test_layer_profile_planted_lines_facets_and_labels():
    runs = ("sft", "grpo")
    df = planted_tensors(layers=5, runs=runs)
    fig = up.layer_profile(df, "rel_delta", meta=planted_meta(runs))
    assert isinstance(fig, Figure)
    axes = data_axes(fig)
    assert [ax.get_title() for ax in axes] == ["attn", "mlp", "norm"]
    attn = axes[0]
    assert [ln.get_label() for ln in attn.get_lines()] == list(runs)
    for ri, ln in enumerate(attn.get_lines()):
        np.testing.assert_array_equal(ln.get_xdata(), np.arange(5))
        # attn per layer = sqrt(sum of squares of q, k, v, o) / sqrt(4 base norms of 1): the correct aggregate
        want = [math.sqrt(sum(planted_value(ri, layer, j) ** 2 for j in range(4)) / 4) for layer in range(5)]
        np.testing.assert_allclose(ln.get_ydata(), want)
    assert attn.get_yscale() == "log"  # planted values span > 100x
    assert "W" in attn.get_ylabel() and axes[-1].get_xlabel() == "layer"
    assert "base-model" in fig._suptitle.get_text()
    assert [t.get_text() for t in fig.legends[0].get_texts()] == list(runs)


def test_layer_profile_from_result_uses_layers_table(real_compare):
    res = real_compare
    fig = up.layer_profile(res, "sparsity_atol", components=["mlp"])
    (ax,) = data_axes(fig)
    lay = res.layers[(res.layers["component"] == "mlp") & (res.layers["run"] == "dft")].sort_values("layer")
    line = [ln for ln in ax.get_lines() if ln.get_label() == "dft"][0]
    np.testing.assert_allclose(line.get_ydata(), lay["sparsity_atol"].to_numpy())
    assert ax.get_yscale() == "linear" and "atol" in ax.get_ylabel()
    fig = up.layer_profile(res, "jaccard_exact")  # cross-run: one line per pair
    assert [ln.get_label() for ln in data_axes(fig)[0].get_lines()] == ["sft vs dft", "sft vs grpo", "dft vs grpo"]
    with pytest.raises(UpdeltaError, match="has no per-layer rows"):
        up.layer_profile(res, "rel_delta", components=["embed"])


def test_layer_profile_single_layer_and_nan():
    df = planted_tensors(layers=1, runs=("a",))
    df.loc[df["component"] == "mlp", ["rel_delta", "delta_fro"]] = math.nan
    fig = up.layer_profile(df[["run", "layer", "component", "rel_delta"]], "rel_delta")  # no norms: median
    axes = data_axes(fig)
    (ln,) = axes[0].get_lines()
    assert list(ln.get_xdata()) == [0] and ln.get_marker() != "None"
    assert [ax.get_title() for ax in axes] == ["attn", "norm"]  # mlp has no value at all
    assert any("median" in t.get_text() and "mlp" in t.get_text() for t in fig.texts)
    df.loc[(df["component"] == "attn") & (df["module"] == "q_proj"), "rel_delta"] = math.nan
    fig = up.layer_profile(df[["run", "layer", "component", "rel_delta"]], "rel_delta",
                           components=["attn", "mlp"])  # asked for: shown even if empty
    axes = data_axes(fig)
    assert [ax.get_title() for ax in axes] == ["attn", "mlp"] and np.isnan(axes[1].get_lines()[0].get_ydata()).all()


def test_layer_profile_80_layers_ticks():
    df = planted_tensors(layers=80, runs=("a", "b", "c"), head=False)
    fig = up.layer_profile(df, "rel_delta")
    draw(fig)
    for ax in data_axes(fig):
        assert len(ax.get_lines()[0].get_xdata()) == 80
        assert overlaps(fig, ax.get_xticklabels()) == [] and overlaps(fig, ax.get_yticklabels()) == []


# ---- spectrum ----------------------------------------------------------------------------------------
def spectral_table(layers=3, k=8, principal=True) -> pd.DataFrame:
    df = planted_tensors(layers=layers, runs=("sft",))
    svs, cu, cv, sw = [], [], [], []
    for _, r in df.iterrows():
        if r["component"] == "norm":  # 1-D: no spectrum
            svs.append(None), cu.append(None), cv.append(None), sw.append(None)
            continue
        s = r["rel_delta"] * 2.0 ** -np.arange(k)
        svs.append(list(s)), cu.append(list(np.linspace(1, 0.5, k))), cv.append(list(np.linspace(0.9, 0.2, k)))
        sw.append([0, 0, 0, 0, 1, 2, 4, 7, r["layer"] if pd.notna(r["layer"]) else 9])
    df["topk_sv"] = svs
    if principal:
        df["principal_cos_u"], df["principal_cos_v"], df["intruders_sweep"] = cu, cv, sw
    return df


def test_spectrum_planted_curves(tmp_path):
    df = spectral_table()
    fig = up.spectrum(df, meta=planted_meta(("sft",)))
    axes = np.array(data_axes(fig)).reshape(4, -1)  # rows: sigma, cos U, cos V, intruders; columns: modules
    assert [ax.get_title() for ax in axes[0]] == ["q", "k", "v", "o", "gate", "up", "down", "lm_head"]
    q = axes[0, 0]
    assert q.get_yscale() == "log" and axes[1, 0].get_yscale() == "linear"
    curves = q.get_lines()
    assert len(curves) == 3 + 1  # one per layer, plus the median
    np.testing.assert_allclose(curves[1].get_ydata(), planted_value(0, 1, 0) * 2.0 ** -np.arange(8))
    np.testing.assert_array_equal(curves[0].get_xdata(), np.arange(1, 9))
    np.testing.assert_allclose(axes[2, 0].get_lines()[0].get_ydata(), np.linspace(0.9, 0.2, 8))
    assert "σ" in axes[0, 0].get_ylabel() and "U0" in axes[1, 0].get_ylabel()
    sweep = axes[3, 0].get_lines()[2]  # layer 2 of q: the intruder count against the threshold
    np.testing.assert_allclose(sweep.get_xdata(), np.arange(1, 10) / 10)
    np.testing.assert_array_equal(sweep.get_ydata(), [0, 0, 0, 0, 1, 2, 4, 7, 2])
    assert axes[3, 0].get_xlabel() == "threshold ε" and axes[2, 0].get_xlabel() == "index i"
    # parquet round trip (list columns come back as arrays)
    res = updelta.tables.result.from_tensors(df, pd.DataFrame(), planted_meta(("sft",)))
    res.save(tmp_path / "s.parquet")
    fig = up.spectrum(updelta.load(tmp_path / "s.parquet"), by="component")
    assert [ax.get_title() for ax in data_axes(fig)[:3]] == ["attn", "mlp", "head"]


def test_spectrum_real_fast_mode(tmp_path):
    import ckpt

    base = ckpt.llama_state(layers=2)
    res = updelta.diff(str(ckpt.save(base, tmp_path / "b")), str(ckpt.save(ckpt.perturb(base), tmp_path / "f")),
                       spectral="fast", topk=4, name="ft")
    fig = up.spectrum(res)
    axes = data_axes(fig)
    assert [ax.get_title() for ax in axes] == ["embed", "q", "k", "v", "o", "gate", "up", "down", "lm_head"]
    t = res.tensors
    want = t[t["name"] == "model.layers.1.mlp.down_proj.weight"]["topk_sv"].item()
    np.testing.assert_allclose(axes[7].get_lines()[1].get_ydata(), want)


def test_spectrum_without_principal_and_errors():
    fig = up.spectrum(spectral_table(principal=False))
    assert len([ax for ax in data_axes(fig)]) == 8  # one row
    with pytest.raises(UpdeltaError, match="--spectral"):
        up.spectrum(planted_tensors(layers=2))


# ---- distribution and the engine's histogram ---------------------------------------------------------
def test_histogram_counts_planted_checkpoint(tmp_path):
    """Counts sum to n_compared; planted deltas land in their power-of-two bin; NaN elements are left out."""
    import ckpt
    import torch

    base = ckpt.llama_state(layers=2, dtype=torch.float32)
    ft = {k: v.clone() for k, v in base.items()}
    name = "model.layers.1.mlp.up_proj.weight"
    flat = ft[name].view(-1)
    flat[:10] += 2.0 ** -10  # lands in [2^-10, 2^-9) ... up to rounding of base + delta
    flat[10:13] = base[name].view(-1)[10:13] + 3e-6  # below atol
    b = base[name].clone()
    b.view(-1)[20:25] = float("nan")
    base[name] = b
    res = updelta.diff(str(ckpt.save(base, tmp_path / "b")), str(ckpt.save(ft, tmp_path / "f")),
                       spectral="off", histogram=True)
    t = res.tensors
    for _, r in t.iterrows():
        assert sum(r["hist"]) == r["n_compared"]
        assert r["hist"][256] == round(r["sparsity_exact"] * r["n_compared"])
    row = t[t["name"] == name].iloc[0]
    assert row["n_compared"] == row["numel"] - 5 and row["nonfinite_base"] == 5
    d = (ft[name].view(-1)[:10].double() - base[name].view(-1)[:10].double()).abs().numpy()
    bins = np.floor(np.log2(d)).astype(int) + 127
    assert sum(row["hist"][i] for i in set(bins)) == 10 and row["hist"][256] == row["n_compared"] - 13
    fig = up.distribution(res)
    ax0, ax = data_axes(fig)[:2]
    assert ax0.patches[0].get_height() == pytest.approx(100 * float(t["hist"].map(lambda h: h[256]).sum())
                                                          / t["n_compared"].sum())
    assert any(abs(ln.get_xdata()[0] - 1e-5) < 1e-12 for ln in ax.get_lines())  # the atol line


def test_distribution_real_result(real_compare):
    """Three runs: one panel per run (steps of several runs would hide each other) beside one bar chart of the
    exact zeros."""
    res = real_compare
    fig = up.distribution(res)
    ax0, *panels = data_axes(fig)
    assert len(panels) == 3 and all(ax.get_xscale() == "log" for ax in panels)
    assert "|ΔW|" in panels[-1].get_xlabel() and "%" in ax0.get_xlabel()
    t = res.tensors
    for i, run in enumerate(["sft", "dft", "grpo"]):
        d = t[t["run"] == run]
        h = np.sum(np.stack(d["hist"].to_numpy()), axis=0)
        assert ax0.patches[i].get_width() == pytest.approx(100 * h[256] / d["n_compared"].sum())
        ax = panels[i]
        assert ax.get_title().startswith(run)
        stairs = [p for p in ax.patches if type(p).__name__ == "StepPatch"][0]
        vals = stairs.get_data().values
        assert vals.sum() + ax0.patches[i].get_width() == pytest.approx(100.0)  # every element in one bin
        assert stairs.get_data().edges[117] == 2.0 ** -10
        sp = (d["sparsity_atol"] * d["n_compared"]).sum() / d["n_compared"].sum()
        assert f"atol {100 * sp:.1f}%" in ax.get_title()
        lo, hi = ax.get_xlim()
        assert lo <= 1e-5 <= hi
    legend = [x.get_text() for f in (fig, *fig.subfigs) for lg in f.legends for x in lg.get_texts()]
    assert any("atol" in x and "1e-05" in x for x in legend)
    fig = up.distribution(res, runs=["grpo"], components="mlp")
    assert len(data_axes(fig)[0].patches) == 1 and "mlp" in fig._suptitle.get_text()


def test_distribution_needs_histogram():
    with pytest.raises(UpdeltaError, match="--histogram"):
        up.distribution(planted_tensors(layers=1))


# ---- tradeoff ----------------------------------------------------------------------------------------
def test_tradeoff_points_and_evals(tmp_path):
    summary = pd.DataFrame({"run": ["sft", "dft", "grpo"], "rel_delta": [0.15, 0.05, 0.01]})
    with pytest.raises(UpdeltaError, match="no evaluations"):
        up.tradeoff(summary)
    ev = {"before": {"target_id": 0.1, "target_ood": 0.2, "knowledge": 0.5, "retention": 0.6},
          "after": {"target_id": 0.4, "target_ood": 0.25, "knowledge": 0.45, "retention": 0.5}}
    (tmp_path / "sft.json").write_text(json.dumps(ev))
    merged = up.with_evals(summary, {"sft": tmp_path / "sft.json", "grpo": {"before": {"retention": 0.6},
                                                                           "after": {"retention": 0.61}}})
    assert merged.loc[0, "gain_target_id"] == pytest.approx(0.3) and math.isnan(merged.loc[1, "gain_retention"])
    assert merged.loc[2, "gain_retention"] == pytest.approx(0.01)
    fig = up.tradeoff(merged, meta=planted_meta(("sft", "dft", "grpo")))
    axes = data_axes(fig)
    assert [ax.get_title() for ax in axes] == ["target task, in distribution", "target task, out of distribution",
                                               "knowledge", "retention"]
    ret = axes[3]
    pts = np.concatenate([c.get_offsets() for c in ret.collections])
    assert sorted(map(tuple, np.round(pts, 6))) == [(0.01, 0.01), (0.15, -0.1)]
    assert "W" in ret.get_xlabel() and "after − before" in ret.get_ylabel()
    assert "dft" not in fig._suptitle.get_text()  # no evaluation for dft: not plotted
    with pytest.raises(UpdeltaError, match="no run of that name"):
        up.with_evals(summary, {"rl": ev})
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UpdeltaError, match="bad.json"):
        up.with_evals(summary, {"sft": tmp_path / "bad.json"})


# ---- saving ------------------------------------------------------------------------------------------
def test_savefig_png_150_dpi(tmp_path):
    from PIL import Image

    fig = up.layer_profile(planted_tensors(layers=3), "rel_delta")
    p = up.savefig(fig, tmp_path / "p.png")
    w, h = fig.get_size_inches()
    with Image.open(p) as im:
        assert im.size == (round(w * 150), round(h * 150))
        assert round(im.info["dpi"][0]) == 150
    with pytest.raises(UpdeltaError, match="use .png"):
        up.savefig(fig, tmp_path / "p.jpg")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["p.png"]
