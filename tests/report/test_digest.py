"""The report a reader can scan (issue 32): findings as one table per topic with the reference once, claims as a table
rendered from the claim records' fields, adapter sparsity said to be n/a (text, JSON, Markdown), figures grouped by
method (colour) and task (marker) with seeds joined."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

import ckpt
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.colors import to_hex

import updelta
from updelta.demo.claims import Claim
from updelta.plot import groups as G
from updelta.plot.lines import tradeoff
from updelta.report import write_report
from updelta.report.digest import claim_row
from updelta.report.text import summary_text


def _planted(frac: float, seed: int, base: dict) -> dict:
    """`base` with exactly round(frac * n) elements per tensor changed by +1/4 (changed under every convention)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in base.items():
        m = torch.zeros(v.numel(), dtype=torch.bool)
        m[torch.randperm(v.numel(), generator=g)[: round(frac * v.numel())]] = True
        out[k] = (v.float().reshape(-1) + m.float() * 0.25).reshape(v.shape).to(v.dtype)
    return out


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Four bf16 runs named like the demo's zoo: two methods x two seeds, 25/30% (sft) and 50/55% (grpo) changed."""
    d = tmp_path_factory.mktemp("zoo")
    base = {k: (torch.randint(32, 64, v.shape, generator=torch.Generator().manual_seed(len(k))).float() / 64)
            .to(torch.bfloat16) for k, v in ckpt.llama_state(dtype=torch.float32).items()}
    fracs = {"sft-target-s0": 0.25, "sft-target-s1": 0.30, "grpo-target-s0": 0.50, "grpo-target-s1": 0.55}
    paths = {r: ckpt.save(_planted(f, i, base), d / r) for i, (r, f) in enumerate(fracs.items())}
    return updelta.compare(ckpt.save(base, d / "base"), paths, spectral="off"), fracs


def test_findings_are_one_table_per_topic_with_the_reference_once(zoo, tmp_path):
    res, fracs = zoo
    write_report(res, tmp_path / "rep", figures=False)
    md = (tmp_path / "rep" / "report.md").read_text()
    findings = md[md.index("## Findings"):md.index("\n## ", md.index("## Findings") + 5)]
    assert findings.count("Mukherjee et al. 2025 report 68.5-96%") == 1  # the reference once, above its table
    assert "of elements unchanged under atol" not in findings  # no per-run sentence restating the table
    rows = {m["run"]: m for m in re.finditer(r"^\| (?P<run>[a-z]+-target-s\d) +\| +(?P<exact>[\d.]+%) +\| +"
                                              r"(?P<atol>[\d.]+%) +\| +(?P<rtol>[\d.]+%) +\| bf16 +\|", findings,
                                              re.MULTILINE)}
    assert set(rows) == set(fracs)  # one row per run, planted shares exact
    sizes = res.tensors.drop_duplicates("name")["numel"].astype(int)
    for run, f in fracs.items():  # exactly round(f * n) elements changed per tensor
        kept = 1 - sum(round(f * n) for n in sizes) / sizes.sum()
        assert rows[run]["atol"] == rows[run]["exact"] == f"{100 * kept:.2f}%", (run, rows[run]["atol"])
    assert "| run " in findings and "delta_fro / smallest" in findings
    big = re.search(r"^\| grpo-target-s1 +\| +([\d.]+)x", findings, re.MULTILINE)
    small = res.summary.set_index("run")["delta_fro"]
    assert big.group(1) == f"{small['grpo-target-s1'] / small.min():.3g}"
    # the findings are all still in summary.json
    sj = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert sum(f["topic"] == "sparsity" for f in sj["findings"]) == 4


def test_claims_render_from_the_records_fields(zoo, tmp_path):
    res, _ = zoo
    c = Claim("GRPO updates are sparser than SFT's", "Mukherjee et al. 2025", "reproduced", "grpo 47.5%, sft 72.5%",
              threshold=">= 2x and >= 25 points", measured={"grpo": 0.475, "sft": 0.725})
    write_report(res, tmp_path / "rep", figures=False, claims=[c])
    md = (tmp_path / "rep" / "report.md").read_text()
    assert md.index("## Summary") < md.index("## Claims from the literature") < md.index("## Findings")
    assert re.search(r"\| GRPO updates are sparser than SFT's +\| \*\*reproduced\*\* +\| >= 2x and >= 25 points +\| "
                     r"grpo 47\.5%, sft 72\.5% +\| Mukherjee et al\. 2025 +\|", md)
    sj = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert sj["claims"] == [{"claim": c.claim, "source": c.source, "verdict": c.verdict, "text": c.text,
                             "threshold": c.threshold, "measured": c.measured, "settings": {}, "kind": "published"}]

    @dataclass(frozen=True)
    class Richer:  # a record with more fields (issue 28): every field is a column, known ones first
        source: str
        claim: str
        verdict: str
        threshold: float
        numbers: dict
    row = claim_row(Richer("S", "C", "inconclusive", 0.2, {"es": 5.2, "grpo": 0.909}))
    assert list(row) == ["claim", "verdict", "threshold", "numbers", "source"]
    assert row["threshold"] == "0.2" and row["numbers"] == "es 5.2; grpo 0.909"


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    peft = pytest.importorskip("peft")
    from transformers import LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("adapter")
    torch.manual_seed(0)
    m = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32))
    m.save_pretrained(d / "base")
    pm = peft.get_peft_model(m, peft.LoraConfig(init_lora_weights=False, r=4, lora_alpha=8,
                                                target_modules=["q_proj", "v_proj"]))
    pm.save_pretrained(d / "adapter")
    return updelta.diff(d / "base", d / "adapter", spectral="off")


def test_adapter_sparsity_is_na_not_unchanged(adapter, tmp_path):
    """The adapted tensors have no sparsity counts: the whole-model figure (unchanged tensors only, 100%) must not
    read as 'nothing changed', in text, JSON and the report."""
    res = adapter
    s = res.summary.iloc[0]
    assert s["sparsity_exact"] == 1.0 and s["n_sparsity_null"] == 4  # the figure over the counted tensors
    text = summary_text(res)
    whole = text.split("Whole model")[1].split("\n\n")[0]
    row = next(ln for ln in whole.splitlines() if ln.startswith(s["run"]))
    assert "100.00%" not in row and row.count("n/a") == 3
    assert "have no sparsity counts" in whole
    comp = text.split("Per component")[1].split("\n\n")[0]
    assert re.search(r"^\S+ +attn .* n/a +n/a +n/a", comp, re.MULTILINE)  # the adapted component
    assert re.search(r"^\S+ +mlp .* 100\.00% +100\.00% +100\.00%", comp, re.MULTILINE)  # really unchanged: stays 100%
    from updelta.commands.common import result_json as summary_json

    rec = summary_json(res)["summary"][0]
    assert rec["sparsity_note"].startswith("n/a: every changed tensor (4) has no sparsity counts")
    write_report(res, tmp_path / "rep", figures=False)
    md = (tmp_path / "rep" / "report.md").read_text()
    summary = md[md.index("## Summary"):md.index("\n## ", md.index("## Summary") + 5)]
    assert "100.00%" not in summary.split("\n| run")[1].splitlines()[2]
    assert "have no sparsity counts" in summary  # the n/a is explained beside the table
    sj = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert sj["runs"][s["run"]]["whole_model"]["sparsity_note"].startswith("n/a")
    found = [f["text"] for f in sj["findings"] if f["topic"] == "sparsity"]
    assert found == ["n/a: every changed tensor (4) has no sparsity counts (adapter factors; docs/adapters.md, "
                     "--merge-dtype); the tensors that have counts are unchanged"]  # not "bit-identical"
    # the figures: the adapted component's cells are not drawn at 100% unchanged, and the figure says why
    from updelta.plot import heatmap, layer_profile

    fig = layer_profile(res, "sparsity_atol")
    shown = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert "attn" not in shown and "mlp" in shown
    assert any("adapter factors have no sparsity counts" in t.get_text() for t in fig.texts)
    fig = heatmap(res, "sparsity_atol")
    assert any("no sparsity_atol for q, v (adapter factors have no sparsity counts)" in t.get_text()
               for t in fig.texts)


def test_partial_left_out_is_said_on_the_same_line():
    from updelta.tables.aggregate import sparsity_cell

    row = pd.Series({"n_sparsity_null": 2, "n_tensors": 10, "n_unchanged": 5})
    assert sparsity_cell("97.50%", row) == "97.50% (2 tensors n/a)"  # 3 counted tensors changed
    assert sparsity_cell("100.00%", pd.Series({"n_sparsity_null": 2, "n_tensors": 10, "n_unchanged": 8})) == "n/a"
    assert sparsity_cell("9.00%", pd.Series({"n_tensors": 10, "n_unchanged": 0})) == "9.00%"


# ---- figures grouped by method -------------------------------------------------------------------------------
RUNS = ["sft-target-s0", "grpo-target-s0", "sft-target-s1", "grpo-target-s1"]


def test_groups_from_evals_then_names_then_none():
    table = pd.DataFrame({"run": ["a", "b", "c", "d"], "method": ["sft", "grpo", "sft", "grpo"],
                          "task": ["t", "t", "t", "t"], "seed": [0, 0, 1, 1]})
    sty = G.styles(["a", "b", "c", "d"], {}, table)  # names say nothing: the evaluations group them
    assert sty["a"]["color"] == sty["c"]["color"] != sty["b"]["color"] == sty["d"]["color"]
    assert sty["a"]["ls"] != sty["c"]["ls"] and G.seed_sets(["a", "b", "c", "d"], sty) == [["a", "c"], ["b", "d"]]
    sty = G.styles(RUNS, {})  # method-task-sN names
    assert sty["sft-target-s0"]["color"] == sty["sft-target-s1"]["color"] != sty["grpo-target-s0"]["color"]
    assert sty["sft-target-s0"]["marker"] == sty["grpo-target-s1"]["marker"]  # one task: one marker
    assert G.styles(["x", "y"], {})["x"]["color"] != G.styles(["x", "y"], {})["y"]["color"]  # one colour per run
    assert all(s["group"] is None for s in G.styles(["x", "y"], {}).values())
    # the evaluation wins over the name
    gs = G.groups_of(["sft-target-s0"], {"run_groups": {"sft-target-s0": {"method": "dft", "task": "k",
                                                                         "seed": 3}}})
    assert gs["sft-target-s0"] == G.Group("dft", "k", 3)


def _tradeoff_summary(runs):
    rel = {"sft-target-s0": 0.01, "sft-target-s1": 0.012, "grpo-target-s0": 0.02, "grpo-target-s1": 0.022,
           "x": 0.01, "y": 0.02}
    return pd.DataFrame({"run": runs, "rel_delta": [rel[r] for r in runs],
                         "gain_target_id": [0.1 * (i + 1) for i in range(len(runs))]})


def _points(fig):
    ax = fig.axes[0]
    out = {}
    for coll in ax.collections:
        off = coll.get_offsets()
        if len(off):
            out[coll.get_label()] = to_hex(coll.get_facecolor()[0])
    lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == 2 and ln.get_ydata()[0] != 0]
    return out, lines


def test_tradeoff_colours_methods_and_joins_seeds():
    fig = tradeoff(_tradeoff_summary(RUNS), meta={"run_order": RUNS})
    colors, joins = _points(fig)
    assert colors["sft-target-s0"] == colors["sft-target-s1"] != colors["grpo-target-s0"] == colors["grpo-target-s1"]
    assert len(joins) == 2  # sft's two seeds, grpo's two seeds
    assert {to_hex(j.get_color()) for j in joins} == {colors["sft-target-s0"], colors["grpo-target-s0"]}
    assert sorted(np.round(joins[0].get_xdata(), 4).tolist() + np.round(joins[1].get_xdata(), 4).tolist()) == \
        [0.01, 0.012, 0.02, 0.022]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["sft", "grpo"]  # per method, not per run
    # the legend sits below the title: its top is under the suptitle's bottom
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    r = canvas.get_renderer()
    assert fig.legends[0].get_window_extent(r).y1 <= fig._suptitle.get_window_extent(r).y0 + 1
    fig = tradeoff(_tradeoff_summary(["x", "y"]), meta={"run_order": ["x", "y"]})  # no groups: per run, no joins
    colors, joins = _points(fig)
    assert colors["x"] != colors["y"] and not joins
