"""One rule for unchanged tensors in every median (docs/metrics.md, Aggregates), `n_unchanged` columns, typed integer
layers in every table, and unchanged runs said once in the text summary."""
from __future__ import annotations

import pandas as pd

from scale_tables import RUNS, result, tensors
from updelta.tables.aggregate import aggregate_tensors, unchanged, unchanged_runs
from updelta.tables.result import from_tensors
from updelta.report.text import summary_text


def lora_on_q_and_v(layers: int = 3) -> pd.DataFrame:
    """A merged rank-8 LoRA on q_proj and v_proj: k_proj and o_proj unchanged (energy ranks 0, no stable rank)."""
    t = tensors(["lora"], layers)
    t = t[t["component"] == "attn"].copy()
    changed = t["module"].isin(["q_proj", "v_proj"])
    t.loc[changed, "energy_rank_90"] = 8
    t.loc[changed, "stable_rank"] = 5.0
    for c in ("ss_delta", "delta_fro", "rel_delta", "sum_abs_delta", "delta_max", "delta_mean_abs"):
        t.loc[~changed, c] = 0.0
    t.loc[~changed, "n_eq"] = 100
    t.loc[~changed, "energy_rank_90"] = 0
    t.loc[~changed, "stable_rank"] = None
    return t


def test_medians_count_changed_tensors_only_and_say_how_many_were_left_out():
    t = lora_on_q_and_v(layers=3)
    assert unchanged(t).tolist() == (~t["module"].isin(["q_proj", "v_proj"])).tolist()
    comp = aggregate_tensors(t, ["run", "component"]).iloc[0]
    assert comp["energy_rank_90"] == 8  # not 0: the unchanged k and o projections are not counted
    assert comp["stable_rank"] == 5.0
    assert comp["n_spectral"] == 6 and comp["n_spectral_unchanged"] == 6 and comp["n_unchanged"] == 6
    assert comp["n_tensors"] == 12  # the sums still count every tensor
    # the old rule (unchanged tensors as rank 0) would have given the lower median 0
    assert sorted(t["energy_rank_90"].tolist())[(len(t) - 1) // 2] == 0


def test_a_group_with_only_unchanged_tensors_has_a_null_median_not_zero():
    t = lora_on_q_and_v(layers=2)
    k = aggregate_tensors(t[t["module"] == "k_proj"], ["run"]).iloc[0]
    assert pd.isna(k["energy_rank_90"]) and k["n_spectral"] == 0 and k["n_spectral_unchanged"] == 2


def test_layer_is_a_nullable_integer_in_every_table_and_sorts_numerically():
    res = result(RUNS[7], 12)
    for name in ("tensors", "layers", "pairs", "pairs_layers"):
        df = getattr(res, name)
        assert str(df["layer"].dtype) == "Int64", name
    assert res.layers.sort_values("layer")["layer"].dropna().unique().tolist() == list(range(12))
    empty = aggregate_tensors(res.tensors.iloc[0:0], ["run", "layer"])
    assert str(empty["layer"].dtype) == "Int64"


def test_unchanged_runs_are_flagged_once_and_get_no_top_list():
    res = result(RUNS[7], 4)
    assert unchanged_runs(res.tensors) == ["noop1", "noop2"]
    assert res.summary.set_index("run").loc["noop1", "n_unchanged"] == 32
    text = summary_text(res)
    assert "noop1 (unchanged)" in text and "noop1, noop2: every tensor bit-identical to the base" in text
    top = text[text.index("Top 10 tensors"):]
    top = top[: top.index("\n\n") if "\n\n" in top else len(top)]
    assert "noop1" not in top.split("\n", 1)[1] and "sft" in top


def test_a_run_with_one_changed_tensor_is_not_unchanged():
    t = tensors(["noop1"], 2)
    t.loc[0, ["ss_delta", "n_eq"]] = [1e-12, 99]
    assert unchanged_runs(t) == [] and unchanged(t).sum() == len(t) - 1
    res = from_tensors(t, pd.DataFrame(), {"run_order": ["noop1"]})
    assert "(unchanged)" not in summary_text(res)
