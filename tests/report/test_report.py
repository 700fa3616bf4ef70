"""The report: files, findings computed from planted numbers, evaluations, Markdown/HTML well-formedness."""
from __future__ import annotations

import json
import re
import sys

import pandas as pd
import pytest
import torch

import ckpt
import updelta
from updelta.errors import UpdeltaError
from updelta.tables.evals import load_eval, parse_eval_specs
from updelta.report import write_report
from updelta.report.findings import REF_RAZOR, findings

EVAL = {"method": "grpo", "task": "arith", "seed": 3, "save_dtype": "bfloat16", "weight_decay": 0.01, "base": "b",
        "before": {"target_id": 0.25, "target_ood": 0.125, "knowledge": 0.5, "retention": 0.75},
        "after": {"target_id": 0.5, "target_ood": 0.25, "knowledge": 0.5, "retention": 0.625}}


def planted(dtype, frac: float, seed: int) -> tuple[dict, dict]:
    """(base, run): values k/64 in [0.5, 1) with random sign; exactly round(frac * n) elements per tensor
    changed by +-1/4 (changed under every convention)."""
    g = torch.Generator().manual_seed(seed)
    base = {}
    for k, v in ckpt.llama_state(dtype=torch.float32).items():
        mag = torch.randint(32, 64, v.shape, generator=torch.Generator().manual_seed(len(k))).float() / 64
        base[k] = mag.to(dtype)
    run = {}
    for k, v in base.items():
        n = v.numel()
        m = torch.zeros(n, dtype=torch.bool)
        m[torch.randperm(n, generator=g)[: round(frac * n)]] = True
        run[k] = (v.float().reshape(-1) + m.float() * 0.25).reshape(v.shape).to(dtype)
    return base, run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A bf16 base, "rl" (exactly 25% of elements changed), "sft" (87.5%) and "same" (identical)."""
    d = tmp_path_factory.mktemp("ck")
    base, rl = planted(torch.bfloat16, 0.25, 1)
    _, sft = planted(torch.bfloat16, 0.875, 2)
    b = ckpt.save(base, d / "base")
    paths = {"rl": ckpt.save(rl, d / "rl"), "sft": ckpt.save(sft, d / "sft"), "same": ckpt.save(base, d / "same")}
    (d / "rl" / "eval.json").write_text(json.dumps({**EVAL, "base": str(b)}))  # trained from this base
    return b, paths, d


@pytest.fixture(scope="module")
def result(runs):
    b, paths, _ = runs
    return updelta.compare(b, paths, spectral="off")


def test_findings_state_the_planted_numbers_with_reference_ranges(result):
    items = findings(result, {})
    sp = {f.subject: f for f in items if f.topic == "sparsity"}
    assert sp["rl"].text.startswith("75.0% of elements unchanged under atol (|D| <= 1e-05; bf16 storage")
    assert "exact (W1 == W0): 75.0%" in sp["rl"].text
    assert sp["sft"].text.startswith("12.5% of elements unchanged")
    assert "bit-identical" in sp["same"].text
    assert "68.5-96%" in sp["rl"].reference and "6-15% for SFT" in sp["rl"].reference
    assert "not directly comparable" not in sp["rl"].reference  # bf16 and atol 1e-5, as in the paper
    pair = {f.subject: f.text for f in items if f.topic == "pair"}
    assert "delta cosine undefined (one update is zero)" in pair["rl vs same"]
    # no evaluation given: the report says it does not measure forgetting, and cites RL's Razor
    forget = [f for f in items if f.topic == "forgetting"][0]
    assert "no retention measurement" in forget.text and forget.reference == REF_RAZOR


def test_findings_flag_incomparable_conventions(tmp_path):
    base, run = planted(torch.float32, 0.5, 3)
    r = updelta.compare(ckpt.save(base, tmp_path / "b"), {"x": ckpt.save(run, tmp_path / "x")}, spectral="off",
                        atol=1e-6)
    sp = [f for f in findings(r, {}) if f.topic == "sparsity"][0]
    assert "50.0% of elements unchanged under atol (|D| <= 1e-06; fp32 storage" in sp.text
    assert "not directly comparable here (fp32 storage, atol 1e-06)" in sp.reference
    assert not [f for f in findings(r, {}) if f.topic == "storage"]  # the bf16 note only for bf16 runs


def test_eval_files():
    with pytest.raises(UpdeltaError, match="NAME=FILE.json"):
        parse_eval_specs(["rl"])


def test_eval_validation(tmp_path):
    p = tmp_path / "e.json"
    p.write_text(json.dumps(EVAL))
    e = load_eval(p)
    assert e.gains == {"target_id": 0.25, "target_ood": 0.125, "knowledge": 0.0, "retention": -0.125}
    (tmp_path / "eval.json").write_text(json.dumps(EVAL))
    assert load_eval(tmp_path).gains == e.gains  # a run folder holding eval.json
    for bad, match in [({"before": {"a": 0.5}}, "'before' and 'after'"),
                       ({"before": {"a": 0.5}, "after": {"a": 1.5}}, r"in \[0, 1\]"),
                       ({"before": {"a": 0.5}, "after": {"b": 0.5}}, "share no split"),
                       ({"before": {"a": "x"}, "after": {"a": 0.5}}, "numbers")]:
        p.write_text(json.dumps(bad))
        with pytest.raises(UpdeltaError, match=match):
            load_eval(p)
    p.write_text("{not json")
    with pytest.raises(UpdeltaError, match="not a readable JSON"):
        load_eval(p)
    with pytest.raises(UpdeltaError, match="no such evaluation"):
        load_eval(tmp_path / "missing.json")


def md_tables(md: str) -> list[list[str]]:
    blocks, cur = [], []
    for line in md.splitlines():
        if line.startswith("|"):
            cur.append(line)
        elif cur:
            blocks.append(cur)
            cur = []
    if cur:
        blocks.append(cur)
    return blocks


def test_report_files_markdown_html_and_summary(result, runs, tmp_path):
    _, _, d = runs
    out = tmp_path / "rep"
    oc = write_report(result, out, evals={"rl": d / "rl" / "eval.json"}, figures=False,
                      gates=["rel_delta<=1", "sparsity_atol>=0.5@rl", "max:rel_delta<=0.0001@sft,component=attn"])
    assert not oc.passed and [g.gate.expr for g in oc.failed] == ["max:rel_delta<=0.0001@sft,component=attn"]
    for f in ("report.md", "report.html", "summary.json", "tables/tensors.parquet", "tables/pairs.parquet",
              "tables/pairs_summary.parquet", "tables/gates.parquet", "tables/evals.parquet"):
        assert (out / f).is_file(), f
    # tables/ is itself a saved result
    back = updelta.load(out / "tables")
    pd.testing.assert_frame_equal(back.summary, result.summary, check_dtype=False)

    sj = json.loads((out / "summary.json").read_text())
    assert sj["updelta_version"] == updelta.__version__ and sj["passed"] is False
    assert sj["options"]["atol"] == 1e-5 and sj["base"]["fingerprint"] == result.meta["base"]["fingerprint"]
    assert sj["runs"]["rl"]["identity"]["path"] == result.meta["runs"]["rl"]["path"]
    assert sj["runs"]["rl"]["whole_model"]["sparsity_atol"] == 0.75
    assert sj["runs"]["rl"]["evaluation"]["gains"]["retention"] == -0.125
    assert sj["runs"]["sft"]["evaluation"] is None
    assert [g["passed"] for g in sj["runs"]["sft"]["gates"]] == [True, False]
    failed = [g for g in sj["gates"] if not g["passed"]][0]
    assert {o["name"] for o in failed["offenders"]} == {n for n in result.tensors["name"] if "self_attn" in n}
    assert sj["pairs"][0]["run_a"] == "rl" and "jaccard_random_atol" in sj["pairs"][0]

    md = (out / "report.md").read_text()
    for heading in ("## Gates", "## Findings", "## Summary (whole model)", "## Evaluations", "## Per component",
                    "## Per layer", "## Across runs", "## Figures", "## Provenance"):
        assert heading in md
    assert "0.250 -> 0.500 (+0.250)" in md  # rl's target gain beside its geometry
    assert "**FAIL**" in md and "cos(W" not in md and "weight cosine" not in md
    # every table: header, separator, rows with the same number of cells and the same width
    tables = md_tables(md)
    assert len(tables) >= 8
    for t in tables:
        cells = [len(re.split(r"(?<!\\)\|", row)) for row in t]
        assert len(set(cells)) == 1, t[0]
        assert len({len(row) for row in t}) == 1, t[0]
        assert re.fullmatch(r"\|( -+:? \|)+", t[1]), t[1]

    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "</html>" in html
    assert not re.search(r"""(src|href)=["'](https?:|//)""", html) and "<link" not in html and "<script" not in html
    assert html.count('class="fail"') >= 1 and "&lt;" not in md


def test_figures_embedded_and_linked(result, tmp_path):
    out = tmp_path / "rep"
    oc = write_report(result, out)
    pngs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert pngs and [f"figures/{p}" for p in pngs] == sorted(oc.figures)
    md = (out / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(links) == sorted(oc.figures)
    for link in links:
        assert not link.startswith(("/", "http")) and (out / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == len(pngs)
    # figures that do not apply are named with the reason
    assert "spectrum: no spectral columns" in md and "tradeoff: no evaluations given" in md


def test_report_still_written_without_the_plot_module(result, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "updelta.plot", None)  # as if updelta.plot could not be imported
    monkeypatch.delattr(updelta, "plot", raising=False)
    out = tmp_path / "rep"
    oc = write_report(result, out)
    assert oc.figures == [] and all(m.error for m in oc.missing_figures)
    md = (out / "report.md").read_text()
    assert "Not drawn:" in md and "heatmap_rel_delta: updelta.plot is not available" in md
    assert list((out / "figures").glob("*.png")) == [] and (out / "report.html").exists()


def test_bad_input_writes_nothing_and_folders_are_protected(result, tmp_path):
    out = tmp_path / "rep"
    with pytest.raises(UpdeltaError, match="matches no run"):
        write_report(result, out, gates=["rel_delta<=1@nobody"])
    with pytest.raises(UpdeltaError, match="no run of that name"):
        write_report(result, out, evals={"ghost": EVAL})
    assert not out.exists()
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "weights.bin").write_bytes(b"x")
    with pytest.raises(UpdeltaError, match="not an updelta report"):
        write_report(result, precious, figures=False)
    assert (precious / "weights.bin").read_bytes() == b"x"
    write_report(result, out, figures=False)
    (out / "stale.txt").write_text("old")
    write_report(result, out, figures=False)  # a previous report is replaced as a whole
    assert not (out / "stale.txt").exists() and (out / "report.md").exists()


def test_cli_report_from_checkpoints_with_eval(runs, tmp_path, monkeypatch, capsys):
    from clirun import run_main

    b, paths, d = runs
    out = tmp_path / "rep"
    code, stdout, err = run_main(monkeypatch, capsys, "report", b, *[f"{k}={v}" for k, v in paths.items()],
                                 "--out", out, "--spectral", "off", "--no-figures",
                                 "--eval", f"rl={d / 'rl' / 'eval.json'}", "--gate", "sparsity_exact>=0.7@rl")
    assert code == 0, err
    assert "PASS sparsity_exact>=0.7@rl: rl 0.75" in stdout
    sj = json.loads((out / "summary.json").read_text())
    assert sj["runs"]["rl"]["evaluation"]["method"] == "grpo" and sj["run_order"] == ["rl", "sft", "same"]
    code, _, err = run_main(monkeypatch, capsys, "report", "--from", out / "tables", "--out", tmp_path / "r2",
                            "--no-figures", "--eval", f"nobody={d / 'rl' / 'eval.json'}")
    assert code == 2 and "no run of that name" in err and not (tmp_path / "r2").exists()
    code, _, err = run_main(monkeypatch, capsys, "report", "--out", tmp_path / "r3")
    assert code == 2 and "--from" in err


def test_many_runs_give_pair_ranges_and_extra_findings_are_listed(tmp_path):
    base = ckpt.llama_state()
    paths = {f"r{i}": ckpt.save(ckpt.perturb(base, frac=0.2 + 0.15 * i, scale=1e-2, seed=i), tmp_path / f"r{i}")
             for i in range(5)}
    r = updelta.compare(ckpt.save(base, tmp_path / "base"), paths, spectral="off")
    items = findings(r, {})
    pair = [f for f in items if f.topic == "pair"]
    assert [f.subject for f in pair] == ["all 10 pairs"] * 3  # not 10 bullets per topic
    ps = r.pairs_summary
    lo = ps.loc[ps["delta_cos"].idxmin()]
    assert f"ranges from {lo['delta_cos']:.3g} ({lo['run_a']} vs {lo['run_b']})" in pair[0].text
    from updelta.report import Finding

    claim = Finding("claim", "DFT gains more than SFT on the target task", "inconclusive: +0.01 (1 seed)",
                    "Wu et al. 2025")
    oc = write_report(r, tmp_path / "rep", figures=False, extra_findings=[claim])
    assert oc.findings[-1] == claim
    md = (tmp_path / "rep" / "report.md").read_text()
    # a claim finding is a row of the claims table: claim, verdict, numbers, source
    assert re.search(r"\| DFT gains more than SFT on the target task +\| \*\*inconclusive\*\* +\| \+0\.01 \(1 seed\) +"
                     r"\| Wu et al\. 2025 +\|", md)
    assert md.index("## Claims from the literature") < md.index("## Findings")
    sj = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert sj["findings"][-1]["topic"] == "claim"
