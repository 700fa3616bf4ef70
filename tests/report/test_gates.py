"""Gates: grammar, semantics on tables with known values, and the CLI's exit codes (0 pass, 1 fail, 2 bad input)."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pandas as pd
import pytest

import updelta
from updelta.errors import UpdeltaError
from updelta.report.gates import GRAMMAR, check_runs, evaluate, parse_gate, validate
from updelta.tables.result import from_tensors

# (run, name, layer, component, numel, delta_fro, base_fro, sparsity_atol)
ROWS = [
    ("sft", "model.layers.0.self_attn.q_proj.weight", 0, "attn", 100, 3.0, 10.0, 0.10),
    ("sft", "model.layers.0.mlp.up_proj.weight", 0, "mlp", 300, 4.0, 20.0, 0.20),
    ("sft", "model.layers.1.self_attn.q_proj.weight", 1, "attn", 100, 1.0, 10.0, 0.30),
    ("grpo", "model.layers.0.self_attn.q_proj.weight", 0, "attn", 100, 0.5, 10.0, 0.90),
    ("grpo", "model.layers.0.mlp.up_proj.weight", 0, "mlp", 300, 0.2, 20.0, 0.80),
    ("grpo", "model.layers.1.self_attn.q_proj.weight", 1, "attn", 100, 2.5, 10.0, 0.70),
]


def table_result():
    """A Result built from a per-tensor table with known values (no checkpoint involved)."""
    recs = []
    for run, name, layer, comp, n, d, b, sp in ROWS:
        recs.append({"run": run, "name": name, "layer": layer, "component": comp, "numel": n, "n_compared": n,
                     "delta_fro": d, "base_fro": b, "rel_delta": d / b, "delta_max": d, "delta_mean_abs": d / n,
                     "cos_delta_base": 0.0, "sparsity_exact": sp, "sparsity_atol": sp, "sparsity_rtol": sp,
                     "nonfinite_base": 0, "nonfinite_ft": 0, "added_rows": 0})
    return from_tensors(pd.DataFrame(recs), pd.DataFrame(), {"run_order": ["sft", "grpo"]})


def whole(run: str) -> float:
    d = math.sqrt(sum(r[5] ** 2 for r in ROWS if r[0] == run))
    b = math.sqrt(sum(r[6] ** 2 for r in ROWS if r[0] == run))
    return d / b


@pytest.mark.parametrize("expr, agg, metric, op, value, runs, comps, layers", [
    ("rel_delta<=0.05", None, "rel_delta", "<=", 0.05, (), (), ()),
    ("sparsity_atol>=0.5@grpo", None, "sparsity_atol", ">=", 0.5, ("grpo",), (), ()),
    ("max:rel_delta<=0.2@component=attn", "max", "rel_delta", "<=", 0.2, (), ("attn",), ()),
    (" mean : delta_max > 1e-3 @ g*, layer=2-5 ", "mean", "delta_max", ">", 1e-3, ("g*",), (), ((2, 5),)),
    ("min:sparsity_exact<50%@component=mlp,layer=3", "min", "sparsity_exact", "<", 0.5, (), ("mlp",), ((3, 3),)),
])
def test_parse(expr, agg, metric, op, value, runs, comps, layers):
    g = parse_gate(expr)
    assert (g.agg, g.metric, g.op, g.value) == (agg, metric, op, value)
    assert (g.selector.runs, g.selector.components, g.selector.layers) == (runs, comps, layers)


@pytest.mark.parametrize("expr, match", [
    ("rel_delta=<0.5", "malformed"),
    ("rel_delta == 0.5", "malformed"),
    ("rel_delta<=", "malformed"),
    ("rel_delta<=abc", "not a number"),
    ("median:rel_delta<=0.5", "unknown aggregate"),
    ("bogus_metric<=0.5", "unknown metric"),
    ("rel_delta<=0.5@", "empty selector"),
    ("rel_delta<=0.5@sft,", "empty selector"),
    ("rel_delta<=0.5@colour=red", "selector item"),
    ("rel_delta<=0.5@layer=x", "layer="),
    ("rel_delta<=0.5@layer=5-2", "empty range"),
    ("rel_delta<=0.5@component=ffn", "matches none"),
])
def test_malformed_gates_name_the_grammar(expr, match):
    with pytest.raises(UpdeltaError, match=match) as e:
        parse_gate(expr)
    assert GRAMMAR in str(e.value) and "\n" not in str(e.value)


def test_whole_model_gate_per_run():
    res = table_result()
    thr = (whole("sft") + whole("grpo")) / 2
    gr = evaluate(res, parse_gate(f"rel_delta<={thr}"))
    vals = {r["subject"]: r["value"] for r in gr.rows}
    assert vals["sft"] == pytest.approx(whole("sft")) and vals["grpo"] == pytest.approx(whole("grpo"))
    assert gr.failed_subjects() == ["sft"] and not gr.passed
    assert [o["run"] for o in gr.offenders] == ["sft"]
    assert "FAIL" in gr.describe() and "sft" in gr.describe()
    assert evaluate(res, parse_gate(f"rel_delta<={thr}@grpo")).passed


def test_aggregate_gates_over_selected_tensors():
    res = table_result()
    # max over attention tensors: sft 0.3, grpo 0.25 -> bound 0.28 fails for sft's layer-0 q_proj only
    gr = evaluate(res, parse_gate("max:rel_delta<=0.28@component=attn"))
    assert {r["subject"]: r["value"] for r in gr.rows} == pytest.approx({"sft": 0.3, "grpo": 0.25})
    assert [(o["run"], o["name"]) for o in gr.offenders] == [("sft", "model.layers.0.self_attn.q_proj.weight")]
    # min with >=: the offenders are the tensors below the bound, lowest first
    gr = evaluate(res, parse_gate("min:sparsity_atol>=0.75"))
    assert gr.failed_subjects() == ["sft", "grpo"]
    assert [o["value"] for o in gr.offenders if o["run"] == "sft"] == [0.1, 0.2, 0.3]
    assert [o["value"] for o in gr.offenders if o["run"] == "grpo"] == [0.7]
    # mean: the run is the offender
    gr = evaluate(res, parse_gate("mean:rel_delta<0.1@layer=0"))
    assert {r["subject"]: r["value"] for r in gr.rows} == pytest.approx({"sft": 0.25, "grpo": 0.03})
    assert gr.offenders == [{"run": "sft", "name": None, "value": pytest.approx(0.25)}]


def test_gate_without_agg_on_a_slice_uses_the_slice_aggregate():
    res = table_result()
    # sft attention: sqrt(3^2 + 1^2) / sqrt(10^2 + 10^2)
    gr = evaluate(res, parse_gate("rel_delta<=1@component=attn,sft"))
    assert gr.rows[0]["value"] == pytest.approx(math.sqrt(10) / math.sqrt(200))
    gr = evaluate(res, parse_gate("sparsity_atol>=0@layer=0"))  # element-weighted over the layer's tensors
    assert {r["subject"]: r["value"] for r in gr.rows} == pytest.approx({"sft": (10 + 60) / 400,
                                                                          "grpo": (90 + 240) / 400})


def test_selectors_that_match_nothing_and_missing_metrics():
    res = table_result()
    with pytest.raises(UpdeltaError, match="matches no run"):
        validate([parse_gate("rel_delta<=1@dft")], res)
    with pytest.raises(UpdeltaError, match="matches no run"):
        check_runs([parse_gate("rel_delta<=1@d*")], ["sft", "grpo"])
    check_runs([parse_gate("rel_delta<=1@s*")], ["sft", "grpo"])
    with pytest.raises(UpdeltaError, match="matches no tensor"):
        validate([parse_gate("rel_delta<=1@layer=9")], res)
    with pytest.raises(UpdeltaError, match="matches no tensor"):
        validate([parse_gate("rel_delta<=1@component=norm")], res)
    with pytest.raises(UpdeltaError, match="no pairs"):
        validate([parse_gate("delta_cos<=0.5")], res)
    with pytest.raises(UpdeltaError, match="spectral"):
        validate([parse_gate("stable_rank<=5")], res)


def test_pair_gates(llama_runs):
    b, runs = llama_runs
    res = updelta.compare(b, runs, spectral="off")
    ps = res.pairs_summary
    thr = float(ps["jaccard_atol"].median())
    gr = evaluate(res, parse_gate(f"jaccard_atol<{thr}"))
    expect_fail = [f"{a}/{b_}" for a, b_, j in zip(ps["run_a"], ps["run_b"], ps["jaccard_atol"]) if not j < thr]
    assert gr.failed_subjects() == expect_fail and len(expect_fail) >= 1
    assert [r["subject"] for r in evaluate(res, parse_gate("delta_cos<=1@grpo")).rows] == ["sft/grpo", "dft/grpo"]
    assert [r["subject"] for r in evaluate(res, parse_gate("delta_cos<=1@sft/dft")).rows] == ["sft/dft"]
    # NaN never passes: an undefined value fails the gate
    g = parse_gate("rel_delta<=1")
    assert not g.holds(float("nan")) and g.holds(0.5)


from clirun import run_main  # noqa: E402,F401  (also used by test_report, test_trajectory)


def test_cli_exit_codes(tmp_path, llama_runs, monkeypatch, capsys):
    b, runs = llama_runs
    spec = [f"{k}={v}" for k, v in runs.items()]
    cmp = tmp_path / "cmp"
    assert run_main(monkeypatch, capsys, "compare", b, *spec, "--out", cmp, "--spectral", "off")[0] == 0
    res = updelta.load(cmp)
    s = res.summary.set_index("run")["rel_delta"]
    # every gate passes -> 0
    code, out, err = run_main(monkeypatch, capsys, "report", "--from", cmp, "--out", tmp_path / "r0", "--no-figures",
                              "--gate", f"rel_delta<={s.max() * 1.01}")
    assert code == 0, err
    assert (tmp_path / "r0" / "report.md").exists() and "PASS" in out
    # a failing gate -> 1, offenders printed, the report still written and marked
    thr = float(s.sort_values().iloc[1]) * 1.001  # between the two largest: only the largest run fails
    worst = s.idxmax()
    code, out, err = run_main(monkeypatch, capsys, "report", "--from", cmp, "--out", tmp_path / "r1", "--no-figures",
                              "--gate", f"rel_delta<={thr}", "--gate", "max:rel_delta<=1e-9@component=attn")
    assert code == 1, err
    assert f"FAIL rel_delta<={thr}: {worst} = " in out
    assert "self_attn" in out  # the offending tensors of the aggregate gate
    md = (tmp_path / "r1" / "report.md").read_text()
    assert "**FAIL**" in md and f"`rel_delta<={thr}`" in md
    # malformed gate, unknown metric, empty selector -> 2 with the grammar, and nothing written
    for i, g in enumerate(("rel_delta=<1", "nonsense<=1", "rel_delta<=1@nobody", "rel_delta<=1@layer=99")):
        out_dir = tmp_path / f"bad{i}"
        code, out, err = run_main(monkeypatch, capsys, "report", "--from", cmp, "--out", out_dir, "--gate", g)
        assert code == 2, (g, err)
        assert "[AGG:]METRIC OP VALUE[@SELECTOR]" in err and len(err.strip().splitlines()) == 1
        assert not out_dir.exists()


def test_cli_bad_gate_before_reading(tmp_path):
    """A separate process, as CI runs it: a malformed gate exits 2 before any checkpoint is read or written."""
    env = {**os.environ, "UPDELTA_PROGRESS": "0"}
    r = subprocess.run([sys.executable, "-m", "updelta.cli", "report", str(tmp_path / "no_such_base"),
                        f"a={tmp_path / 'nope'}", "--out", str(tmp_path / "x"), "--gate", "rel_delta<<1"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "malformed" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()
