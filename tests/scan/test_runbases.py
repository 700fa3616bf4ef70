"""Per-run bases (updelta/runbases.py, engine.scan): a run measured from a checkpoint of its own.

Planted on dyadic grids (weights k/64, updates k/1024 and k/4096): every weight, every update and every sum of
squares is exact in float32/float64, so C = B + D2 measured from B has ||D|| = ||D2|| exactly.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import ckpt
import updelta
from clirun import run_main
from updelta.errors import UpdeltaError
from updelta.scan.runbases import merge_notes, resolve_run_bases, split_pairs


def grid(shape, g, lo, hi, scale) -> torch.Tensor:
    return torch.randint(lo, hi, shape, generator=g).double() / scale


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """base; A = base + D3; B = base + D1; C = B + D2 (all float32, exact), and the float64 updates."""
    d = tmp_path_factory.mktemp("runbases")
    g = torch.Generator().manual_seed(3)
    base, d1, d2, d3 = {}, {}, {}, {}
    for k, v in ckpt.llama_state(dtype=torch.float32).items():
        sign = torch.where(torch.rand(v.shape, generator=g) < 0.5, -1.0, 1.0).double()
        base[k] = grid(v.shape, g, 32, 64, 64) * sign
        d1[k], d2[k], d3[k] = (grid(v.shape, g, -8, 9, 1024), grid(v.shape, g, -8, 9, 4096),
                               grid(v.shape, g, -8, 9, 1024))
    b = {k: base[k] + d1[k] for k in base}
    c = {k: b[k] + d2[k] for k in base}
    a = {k: base[k] + d3[k] for k in base}
    f32 = lambda sd: {k: v.float() for k, v in sd.items()}  # noqa: E731
    for sd in (b, c, a):
        assert all(torch.equal(v.float().double(), v) for v in sd.values())  # exact in float32
    cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 16, "intermediate_size": 32,
           "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 40}
    paths = {k: ckpt.save(f32(sd), d / k, config=cfg) for k, sd in (("base", base), ("A", a), ("B", b), ("C", c))}
    return paths, {"D1": d1, "D2": d2, "D3": d3}


@pytest.fixture(scope="module")
def result(planted):
    p, _ = planted
    return updelta.compare(p["base"], {"A": p["A"], "B": p["B"], "C": p["C"]}, run_bases={"C": "B"},
                           spectral="off", progress=False)


def fro(ds: dict) -> float:
    return math.sqrt(sum(float((v ** 2).sum()) for v in ds.values()))


def test_run_measured_from_its_own_base_has_the_planted_update(result, planted):
    p, d = planted
    s = result.summary.set_index("run")
    assert s.loc["C", "delta_fro"] == fro(d["D2"])  # exactly, not ||D1 + D2||
    assert s.loc["B", "delta_fro"] == fro(d["D1"]) and s.loc["A", "delta_fro"] == fro(d["D3"])
    t = result.tensors[result.tensors["run"] == "C"].set_index("name")
    for k, v in d["D2"].items():
        assert t.loc[k, "delta_fro"] == math.sqrt(float((v ** 2).sum())), k
    assert s.loc["C", "base"] == str(p["B"]) and s.loc["A", "base"] == s.loc["B", "base"] == str(p["base"])


def test_the_split_changes_no_number(result, planted):
    """A and B (common base) as in a compare of those two alone; C as in a diff of B and C."""
    p, _ = planted
    ab = updelta.compare(p["base"], {"A": p["A"], "B": p["B"]}, spectral="off", progress=False)
    bc = updelta.diff(p["B"], p["C"], name="C", spectral="off", progress=False)
    cols = ["delta_fro", "base_fro", "rel_delta", "cos_delta_base", "sparsity_exact", "n_le_atol", "ss_delta"]
    for other, runs in ((ab, ["A", "B"]), (bc, ["C"])):
        mine = result.tensors[result.tensors["run"].isin(runs)].set_index(["run", "name"])[cols]
        theirs = other.tensors.set_index(["run", "name"])[cols]
        assert mine.loc[theirs.index].equals(theirs)
    pa = result.pairs.set_index("name")
    assert set(zip(result.pairs["run_a"], result.pairs["run_b"])) == {("A", "B")}
    assert pa["delta_cos"].equals(ab.pairs.set_index("name")["delta_cos"])
    assert list(result.tensors["run"][:3]) == ["A", "B", "C"]  # tensor-major, runs in order, as one pass writes


def test_pairs_of_different_bases_are_null_with_a_note(result, planted):
    p, _ = planted
    ps = result.pairs_summary.set_index(["run_a", "run_b"])
    assert math.isnan(ps.loc[("B", "C"), "delta_cos"]) and math.isnan(ps.loc[("A", "C"), "jaccard_atol"])
    assert ps.loc[("B", "C"), "n_tensors"] == 0 and ps.loc[("A", "B"), "n_tensors"] > 0
    assert not math.isnan(ps.loc[("A", "B"), "delta_cos"])
    assert set(zip(result.pairs_heads["run_a"], result.pairs_heads["run_b"])) == {("A", "B")}
    assert len(result.pairs_heads) and len(result.pairs_layers) and "C" not in set(result.pairs_layers["run_b"])
    skipped = {(x["run_a"], x["run_b"]): x["why"] for x in result.meta["pairs_skipped"]}
    assert set(skipped) == {("A", "C"), ("B", "C")}
    assert skipped[("B", "C")] == f"different bases (B from the common base, C from {p['B']})"
    assert result.meta["pairs"] == [["A", "B"]]
    info = result.info
    assert info.base_of("C").path == str(p["B"]) and info.base_of("A") == info.base
    assert info.has_own_base("C") and not info.has_own_base("B")
    assert result.meta["run_bases"]["C"]["fingerprint"] == updelta.diff(p["base"], p["B"], spectral="off",
                                                                       progress=False).meta["runs"]["B"]["fingerprint"]
    from updelta.report.text import summary_text

    text = summary_text(result)
    assert f"C: measured from its own base {p['B']}" in text and "B vs C: cross-run metrics not computed" in text


def test_saved_and_loaded_keeps_bases_and_null_pairs(result, tmp_path):
    back = updelta.load(result.save(tmp_path / "cmp"))
    assert back.info.base_of("C") == result.info.base_of("C")
    assert back.summary["base"].tolist() == result.summary["base"].tolist()
    pd_cols = ["run_a", "run_b", "n_tensors"]
    assert back.pairs_summary[pd_cols].equals(result.pairs_summary[pd_cols])
    assert back.pairs_summary["delta_cos"].isna().tolist() == [False, True, True]


def test_run_base_equal_to_the_common_base_is_one_group(planted):
    p, _ = planted
    r = updelta.compare(p["base"], {"A": p["A"], "B": p["B"]}, run_bases={"B": str(p["base"])}, spectral="off",
                        progress=False)
    assert r.meta["pairs_skipped"] == [] and r.meta["pairs"] == [["A", "B"]]
    assert not r.info.has_own_base("B") and r.meta["run_bases"]["B"] == r.meta["base"]


def test_every_pair_skipped_still_has_the_pair_columns(planted, tmp_path):
    p, _ = planted
    r = updelta.compare(p["base"], {"B": p["B"], "C": p["C"]}, run_bases={"C": p["B"]}, spectral="off",
                        progress=False)
    assert r.pairs.empty and len(r.pairs_summary) == 1
    assert {"delta_cos", "jaccard_atol", "sign_agree"} <= set(r.pairs_summary.columns)
    assert r.pairs_summary["delta_cos"].isna().all()
    from updelta.report import write_report

    oc = write_report(r, tmp_path / "rep", figures=False)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "**C**: measured from its own base" in md and "**B vs C**: cross-run metrics not computed" in md
    assert json.loads((tmp_path / "rep" / "summary.json").read_text())["pairs_skipped"][0]["run_b"] == "C"
    assert oc.passed


def test_resolve_run_bases_names_and_errors():
    runs = {"sft": "runs/sft", "grpo": "runs/grpo"}
    assert resolve_run_bases({"grpo": "sft"}, runs) == {"grpo": "runs/sft"}  # a run name stands for its path
    assert resolve_run_bases({"grpo": "other/ck"}, runs) == {"grpo": "other/ck"}
    with pytest.raises(UpdeltaError, match=r"--run-base ghost=sft: no run named 'ghost' \(runs: sft, grpo\)"):
        resolve_run_bases({"ghost": "sft"}, runs)
    with pytest.raises(UpdeltaError, match="cannot be its own base"):
        resolve_run_bases({"sft": "sft"}, runs)


def test_split_pairs_and_merged_notes():
    kept, skipped = split_pairs([("a", "b"), ("a", "c"), ("b", "c")], {"a": 0, "b": 1, "c": 1},
                                {0: "the common base", 1: "sft/"})
    assert kept == [("b", "c")] and [(s["run_a"], s["run_b"]) for s in skipped] == [("a", "b"), ("a", "c")]
    n = merge_notes([(["a"], {"family": "llama", "tied": [1], "only_in_base": {"a": []}, "filtered_out": 2,
                              "unindexed": {"base": ["x"]}}),
                     (["c"], {"family": "llama", "tied": [1, 2], "only_in_base": {"c": ["y"]}, "filtered_out": 3,
                              "unindexed": {"base": ["z"]}})])
    assert n == {"family": "llama", "tied": [1, 2], "only_in_base": {"a": [], "c": ["y"]}, "filtered_out": 3,
                 "unindexed": {"base": ["x"], "base of c": ["z"]}}


def test_cli_run_base(planted, monkeypatch, capsys):
    p, d = planted
    code, out, err = run_main(monkeypatch, capsys, "compare", p["base"], f"B={p['B']}", f"C={p['C']}",
                              "--run-base", "C=B", "--spectral", "off", "--no-progress", "--json")
    assert code == 0, err
    j = json.loads(out)
    assert j["run_bases"]["C"]["path"] == str(p["B"]) and j["pairs_skipped"][0]["run_a"] == "B"
    whole = {r["run"]: r for r in j["summary"]}
    assert whole["C"]["delta_fro"] == pytest.approx(fro(d["D2"]), rel=1e-9)  # JSON keeps 10 digits
    assert whole["C"]["base"] == str(p["B"])


@pytest.mark.parametrize("cmd", ["compare", "report"])
def test_cli_unknown_run_base_name_is_one_line(planted, monkeypatch, capsys, tmp_path, cmd):
    p, _ = planted
    extra = ["--out", tmp_path / "rep"] if cmd == "report" else []
    code, out, err = run_main(monkeypatch, capsys, cmd, p["base"], f"B={p['B']}", f"C={p['C']}",
                              "--run-base", "X=B", "--no-progress", *extra)
    assert code == 2 and out == ""
    assert err == "updelta: --run-base X=B: no run named 'X' (runs: B, C); pass --run-base NAME=PATH with NAME " \
                  "one of the runs\n"
    assert not (tmp_path / "rep").exists()


def test_cli_report_from_refuses_run_base(result, monkeypatch, capsys, tmp_path):
    saved = result.save(tmp_path / "cmp")
    code, _, err = run_main(monkeypatch, capsys, "report", "--from", saved, "--out", tmp_path / "rep",
                            "--run-base", "C=B")
    assert code == 2 and err.count("\n") == 1 and "--run-base applies when the runs are compared now" in err


def test_layer_and_heads_tables_cover_every_run(result):
    assert set(result.layers["run"]) == {"A", "B", "C"} and set(result.heads["run"]) == {"A", "B", "C"}
    assert np.array_equal(result.summary["run"].to_numpy(), np.array(["A", "B", "C"], dtype=object))


def test_gates_on_pairs_skip_pairs_of_different_bases(result, planted):
    from updelta.report.gates import evaluate, parse_gates

    g = evaluate(result, parse_gates(["delta_cos>=-1"])[0])
    assert [r["subject"] for r in g.rows] == ["A/B"] and g.passed  # the null pairs are not gated
    with pytest.raises(UpdeltaError, match="matches no pair of runs measured; not compared .different bases"):
        evaluate(result, parse_gates(["delta_cos>=-1@B/C"])[0])
    p, _ = planted
    two = updelta.compare(p["base"], {"B": p["B"], "C": p["C"]}, run_bases={"C": "B"}, spectral="off",
                          progress=False)
    with pytest.raises(UpdeltaError, match="has no pairs .every pair of runs has different bases"):
        evaluate(two, parse_gates(["delta_cos>=-1"])[0])
