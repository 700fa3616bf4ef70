"""Every verdict branch of every claim, on constructed zoo results (tables built by hand, no training): the rule,
the sizes from the sources, RL's Razor on each run's own task, the DFT-mechanism predictions, the records."""
import json
import math
from types import SimpleNamespace

import pandas as pd
import pytest

from updelta.demo import claim_rules as cr
from updelta.demo.predictions import control_ids, named_tensors
from updelta.demo.claims import claims, run_kl, zoo_name
from updelta.tables.evals import load_evals


class Zoo:
    """The tables `claims` reads, built by hand: summary per run, tensors, lens, pairs_summary, info.options.atol."""

    def __init__(self, summary: dict, tensors=(), lens=(), pairs=()):
        self.runs = list(summary)
        self.summary = pd.DataFrame([{"run": r, **v} for r, v in summary.items()])
        self.tensors = pd.DataFrame(list(tensors), columns=["run", "name", "row_top1_share", "row_gini",
                                                            "col_top1_share", "col_gini"])
        self.lens = pd.DataFrame(list(lens), columns=["run", "token_id"])
        self.pairs_summary = pd.DataFrame(list(pairs), columns=["run_a", "run_b", "delta_cos"])
        self.info = SimpleNamespace(options=SimpleNamespace(atol=1e-5))


GEOM = {"rel_delta": 0.01, "delta_fro": 1.0, "sparsity_atol": 0.1, "sparsity_exact": 0.1, "sparsity_rtol": 0.1}


def _ev(method, task, seed, gains=None, items=200, kl=None, retention=0.0, **extra):
    before = {"target_id": 0.4, "target_ood": 0.2, "knowledge": 0.1, "retention": 0.9}
    after = {k: before[k] + (gains or {}).get(k, 0.0) for k in before}
    after["retention"] = before["retention"] + retention
    d = {"method": method, "task": task, "seed": seed, "save_dtype": "bfloat16", "weight_decay": 0.0,
         "before": before, "after": after, "eval_items": {k: items for k in before},
         "options": {"lr": 1e-4, "steps": 100, "eval_items": items}, **extra}
    if kl is not None:
        d["forgetting"] = kl
    return d


def _by(found, start):
    return next(c for c in found if c.claim.startswith(start))


def _zoo(spec: dict, seeds=(0, 1), gains=None, items=200, evals_extra=None):
    """spec: (method, task) -> per-seed geometry overrides (a dict, or a function of the seed)."""
    summary, evals = {}, {}
    for s in seeds:
        for (m, t), geo in spec.items():
            name = zoo_name(m, t, s)
            summary[name] = {**GEOM, **(geo(s) if callable(geo) else geo)}
            g = (gains or {}).get((m, t))
            evals[name] = _ev(m, t, s, g(s) if callable(g) else g, items, **((evals_extra or {}).get((m, t), {})))
    return summary, load_evals(evals)


def test_rule_branches():
    assert cr.rule([0.2, 0.25, 0.22]) == "reproduced"
    assert cr.rule([0.2, 0.25, 0.22], size_ok=True) == "reproduced"
    assert cr.rule([0.2, 0.25, 0.22], size_ok=False) == "direction only"
    assert cr.rule([-0.2, -0.25], size_ok=False) == "not reproduced"
    assert cr.rule([0.2, -0.1, 0.3], size_ok=True) == "inconclusive"
    assert cr.rule([0.2], size_ok=True) == "inconclusive"  # one seed never decides
    assert cr.rule([0.01, 0.012], noise=0.05, size_ok=True) == "inconclusive"  # within the noise floor
    assert set(cr.VERDICTS) == {"reproduced", "direction only", "not reproduced", "inconclusive"}


@pytest.mark.parametrize("dft, sft, items, want", [
    (0.40, 0.10, 200, "reproduced"),  # ratio 4 >= 1.69
    (0.35, 0.22, 200, "direction only"),  # difference 0.13 beyond the noise floor 0.1, ratio 1.59 < 1.69
    (0.10, 0.30, 200, "not reproduced"),
    (0.22, 0.20, 200, "inconclusive"),  # within the evaluation noise
])
def test_dft_gain_claim_branches(dft, sft, items, want):
    spec = {("dft", "target"): {}, ("sft", "target"): {}}
    summary, evals = _zoo(spec, gains={("dft", "target"): {"target_id": dft}, ("sft", "target"): {"target_id": sft}},
                          items=items)
    c = _by(claims(Zoo(summary), evals), "DFT improves more")
    assert c.verdict == want, c.text
    assert "threshold: DFT's mean gain >= 1.69x SFT's" in c.text and "lr 0.0001, 100 steps" in c.text
    assert c.measured["dft_gain"] == pytest.approx([dft, dft]) and c.settings["dft-target"]["seeds"] == [0, 1]


@pytest.mark.parametrize("sft, dft, items, want", [
    (0.50, 0.05, 200, "reproduced"),
    (0.15, 0.10, 100000, "direction only"),  # 5 points beyond a tiny noise floor, short of 6.48
    (0.05, 0.50, 200, "not reproduced"),
])
def test_knowledge_claim_branches(sft, dft, items, want):
    spec = {("sft", "knowledge"): {}, ("dft", "knowledge"): {}}
    summary, evals = _zoo(spec, gains={("sft", "knowledge"): {"knowledge": sft},
                                       ("dft", "knowledge"): {"knowledge": dft}}, items=items)
    c = _by(claims(Zoo(summary), evals), "SFT absorbs")
    assert c.verdict == want and "6.48 points" in c.threshold


@pytest.mark.parametrize("es, want", [(1000.0, "reproduced"), (5.7, "direction only"), (0.1, "not reproduced")])
def test_es_norm_claim_branches(es, want):
    spec = {("es", "target"): lambda s: {"delta_fro": es * (1 + 0.01 * s)}, ("grpo", "target"): {"delta_fro": 1.0}}
    summary, evals = _zoo(spec)
    c = _by(claims(Zoo(summary), evals), "ES updates")
    assert c.verdict == want and "within an order of magnitude of ~1000" in c.text
    assert c.measured["ratio_geomean"] == pytest.approx(es * math.sqrt(1.01), rel=1e-9)


def test_es_norm_inconclusive_on_mixed_signs():
    spec = {("es", "target"): lambda s: {"delta_fro": 10.0 if s == 0 else 0.1}, ("grpo", "target"): {"delta_fro": 1.0}}
    summary, evals = _zoo(spec)
    assert _by(claims(Zoo(summary), evals), "ES updates").verdict == "inconclusive"


@pytest.mark.parametrize("grpo, sft, want", [
    (0.80, 0.10, "reproduced"),  # 8x and 70 points
    (0.095, 0.087, "direction only"),  # the toy zoo's 9.5% vs 8.7%: sign holds, size far short
    (0.30, 0.20, "direction only"),  # 10 points: short of 25
    (0.05, 0.10, "not reproduced"),
])
def test_sparsity_claim_branches(grpo, sft, want):
    spec = {("grpo", "target"): lambda s: {"sparsity_atol": grpo + 0.001 * s},
            ("sft", "target"): lambda s: {"sparsity_atol": sft + 0.0005 * s}}
    summary, evals = _zoo(spec)
    c = _by(claims(Zoo(summary), evals), "RL (GRPO) updates are much sparser")
    assert c.verdict == want, c.text
    assert "threshold: RL's unchanged share >= 2x SFT's and >= 25 points above it" in c.text


def test_sparsity_inconclusive_when_seeds_disagree():
    spec = {("grpo", "target"): lambda s: {"sparsity_atol": 0.8 if s == 0 else 0.05}, ("sft", "target"): {}}
    summary, evals = _zoo(spec)
    assert _by(claims(Zoo(summary), evals), "RL (GRPO)").verdict == "inconclusive"


@pytest.mark.parametrize("bf16, fp32, want", [(0.9, 0.1, "reproduced"), (0.5, 0.4, "direction only"),
                                              (0.1, 0.5, "not reproduced")])
def test_precision_claim_branches(bf16, fp32, want):
    spec = {("grpo", "target"): lambda s: {"sparsity_exact": bf16 + 0.001 * s},
            ("grpofp32", "target"): {"sparsity_exact": fp32}, ("grpolr10", "target"): {"sparsity_exact": fp32}}
    summary, evals = _zoo(spec)
    assert _by(claims(Zoo(summary), evals), "RL's apparent sparsity").verdict == want


def _kl(split, value, other=None):
    by = {split: {"kl_per_token": value}}
    if other is not None:
        by["knowledge" if split == "target_id" else "target_id"] = {"kl_per_token": other}
    return {"kl_per_token": value, "split": split, "by_split": by}


def test_run_kl_reads_each_runs_own_task():
    e = load_evals({"k": _ev("sft", "knowledge", 0, kl=_kl("knowledge", 0.5, other=0.01))})["k"]
    assert run_kl(e, "knowledge") == (0.5, 0.01)
    old = load_evals({"k": _ev("sft", "knowledge", 0, kl={"kl_per_token": 0.3})})["k"]  # target_id prompts
    assert run_kl(old, "knowledge") == (None, 0.3) and run_kl(old, "target") == (0.3, None)


def _razor_zoo(kl_of, rel_of, seeds=(0, 1, 2)):
    """Six runs per seed, forgetting 0.00, 0.01, ... 0.05 in run order; KL and rel_delta by rank."""
    keys = [("sft", "target"), ("dft", "target"), ("grpo", "target"), ("es", "target"), ("sft", "knowledge"),
            ("dft", "knowledge")]
    summary, evals = {}, {}
    for s in seeds:
        for i, (m, t) in enumerate(keys):
            name = zoo_name(m, t, s)
            summary[name] = {**GEOM, "rel_delta": rel_of(i)}
            split = "target_id" if t == "target" else "knowledge"
            evals[name] = _ev(m, t, s, kl=_kl(split, kl_of(i)), retention=-0.01 * i)
    return Zoo(summary), load_evals(evals)


@pytest.mark.parametrize("kl_of, rel_of, want", [
    (lambda i: 0.1 * i, lambda i: 1.0 - 0.1 * i, "reproduced"),  # KL ranks forgetting, rel_delta anti-ranks it
    (lambda i: [0.3, 0.1, 0.2, 0.5, 0.0, 0.4][i], lambda i: 1.0 - 0.1 * i, "direction only"),  # rho_kl 0.37
    (lambda i: 1.0 - 0.1 * i, lambda i: 0.1 * i, "not reproduced"),
])
def test_razor_branches(kl_of, rel_of, want):
    zoo, evals = _razor_zoo(kl_of, rel_of)
    c = _by(claims(zoo, evals), "Forgetting is predicted")
    assert c.verdict == want, c.text
    assert c.measured["n_runs"] == 18 and "All 18 runs" in c.text
    kn = next(r for r in c.measured["runs"] if r["run"] == "sft-knowledge-s0")
    assert kn["kl_own_task"] == pytest.approx(kl_of(4))  # the knowledge run's KL is its knowledge-prompt KL


def test_razor_one_seed_inconclusive():
    zoo, evals = _razor_zoo(lambda i: 0.1 * i, lambda i: 1.0 - 0.1 * i, seeds=(0,))
    assert _by(claims(zoo, evals), "Forgetting is predicted").verdict == "inconclusive"


def test_razor_leaves_out_a_knowledge_run_measured_on_target_prompts():
    zoo, evals = _razor_zoo(lambda i: 0.1 * i, lambda i: 1.0 - 0.1 * i)
    evals["sft-knowledge-s0"].extra["forgetting"] = {"kl_per_token": 9.0}  # an old record: target_id prompts
    c = _by(claims(zoo, evals), "Forgetting is predicted")
    assert c.measured["n_runs"] == 17 and "sft-knowledge-s0" not in [r["run"] for r in c.measured["runs"]]


def _conc_zoo(sft_of, dft_of, task="knowledge"):
    names = ["model.embed_tokens.weight", "lm_head.weight", "model.layers.0.mlp.down_proj.weight",
             "model.layers.1.mlp.down_proj.weight"]
    summary, tensors = {}, []
    for s in (0, 1):
        for m, f in (("sft", sft_of), ("dft", dft_of)):
            run = zoo_name(m, task, s)
            summary[run] = dict(GEOM)
            for n in names:
                top, gini = f(s)
                tensors.append((run, n, top, gini, top, gini))
    _, evals = _zoo({("sft", task): {}, ("dft", task): {}})
    return Zoo(summary, tensors), evals


@pytest.mark.parametrize("sft_of, dft_of, want", [
    (lambda s: (0.20 + 0.001 * s, 0.60), lambda s: (0.10, 0.40 + 0.002 * s), "reproduced"),
    (lambda s: (0.10, 0.40), lambda s: (0.20 + 0.001 * s, 0.60 + 0.001 * s), "not reproduced"),
    (lambda s: (0.20 + 0.001 * s, 0.40), lambda s: (0.10, 0.60 + 0.001 * s), "inconclusive"),  # figures disagree
])
def test_concentration_prediction_branches(sft_of, dft_of, want):
    zoo, evals = _conc_zoo(sft_of, dft_of)
    assert [x[0] for x in named_tensors(zoo)] == ["embedding", "unembedding", "last down_proj (layer 1)"]
    found = [c for c in claims(zoo, evals) if c.claim.startswith("SFT's update is more concentrated")]
    assert len(found) == 3 and all(c.verdict == want and c.kind == "prediction" for c in found)
    assert "down_proj" in found[2].measured["tensor"] and found[2].measured["axis"] == "col"
    assert "updelta's prediction" in found[0].source


def _lens_zoo(sft_hits, dft_hits):
    """Each run's lens: 100 tokens; `hits(s)` of them training-target ids (0-9), 10 control ids (20-29), the
    rest other ids (40)."""
    summary, lens = {}, []
    for s in (0, 1):
        for m, hits in (("sft", sft_hits), ("dft", dft_hits)):
            run = zoo_name(m, "target", s)
            summary[run] = dict(GEOM)
            n = hits(s)
            lens += [(run, i % 10) for i in range(n)] + [(run, 20 + i % 10) for i in range(10)]
            lens += [(run, 40)] * (80 - n + 10)
    _, evals = _zoo({("sft", "target"): {}, ("dft", "target"): {}})
    return Zoo(summary, lens=lens), evals


TOKENS = {"target": {"ids": list(range(10)), "control": list(range(20, 30)), "rule": "test"}}


@pytest.mark.parametrize("sft, dft, want", [
    (lambda s: 60 + s, lambda s: 10, "reproduced"),
    (lambda s: 10, lambda s: 60 + s, "not reproduced"),
    (lambda s: 30 + 20 * s, lambda s: 40, "inconclusive"),  # seeds disagree
    (lambda s: 32 + s, lambda s: 30, "inconclusive"),  # within the sampling noise of 100 tokens
])
def test_lens_prediction_branches(sft, dft, want):
    zoo, evals = _lens_zoo(sft, dft)
    c = _by(claims(zoo, evals, TOKENS), "SFT's logit-lens directions")
    assert c.verdict == want, c.text
    r = c.measured["runs"]["sft-target-s0"]
    assert r["tokens"] == 100 and r["target_share"] == pytest.approx(sft(0) / 100)
    assert r["control_share"] == pytest.approx(0.1) and r["excess"] == pytest.approx(sft(0) / 100 - 0.1)


def test_lens_claims_need_token_sets():
    zoo, evals = _lens_zoo(lambda s: 60, lambda s: 10)
    assert not [c for c in claims(zoo, evals) if "logit-lens" in c.claim]


def test_control_ids_match_frequency():
    from collections import Counter
    counts = Counter({0: 1000, 1: 10, 2: 990, 3: 11, 4: 500, 5: 0})
    got = control_ids([0, 1], counts, vocab=6, exclude={5}, seed=0)
    assert len(got) == 2 and not set(got) & {0, 1, 5}
    assert got[0] in (2, 4, 3) and got[1] in (3, 4, 2) and got[0] != got[1]


def test_no_size_claim_is_never_direction_only():
    """A prediction without a published size is reproduced on the sign: never `direction only`."""
    zoo, evals = _lens_zoo(lambda s: 60 + s, lambda s: 10)
    found = [c for c in claims(zoo, evals, TOKENS) if c.kind == "prediction"]
    assert found and all(c.verdict != "direction only" and cr.NO_SIZE in c.threshold for c in found)


def test_records_are_json_with_threshold_measured_and_settings():
    spec = {("grpo", "target"): lambda s: {"sparsity_atol": 0.095 + 0.001 * s},
            ("sft", "target"): lambda s: {"sparsity_atol": 0.087 + 0.0005 * s}}
    summary, evals = _zoo(spec)
    for c in claims(Zoo(summary), evals):
        rec = json.loads(json.dumps(c.as_record()))
        assert set(rec) == {"claim", "source", "verdict", "text", "threshold", "measured", "settings", "kind"}
        assert rec["verdict"] in cr.VERDICTS and rec["threshold"] and f"threshold: {rec['threshold']}" in rec["text"]
    c = _by(claims(Zoo(summary), evals), "RL (GRPO)")
    assert c.settings["grpo-target"] == {"lr": 1e-4, "steps": 100, "budget_unit": "steps", "save_dtype": "bfloat16",
                                         "weight_decay": 0.0, "eval_items": {"target_id": 200, "target_ood": 200,
                                                                             "knowledge": 200, "retention": 200},
                                         "seeds": [0, 1], "runs": ["grpo-target-s0", "grpo-target-s1"]}


def test_gain_se_known_value():
    e = load_evals({"a": _ev("sft", "target", 0, {"target_id": 0.2}, items=200)})["a"]
    assert cr.gain_se(e, "target_id") == pytest.approx(math.sqrt((0.4 * 0.6 + 0.6 * 0.4) / 200))
