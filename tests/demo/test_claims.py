"""Claims tested on a zoo: verdict rule and the numbers each claim states (planted runs, hand-made evaluations)."""
import math

import pytest

import updelta
from updelta.demo.claims import claims, verdict, zoo_name
from updelta.tables.evals import load_evals

import ckpt


def test_verdict_rule():
    assert verdict([0.2]) == "inconclusive"  # one seed never decides
    assert verdict([0.2, 0.25, 0.22]) == "reproduced"
    assert verdict([-0.2, -0.25, -0.22]) == "not reproduced"
    assert verdict([0.2, -0.1, 0.3]) == "inconclusive"  # signs disagree
    assert verdict([0.01, 0.012], noise=0.05) == "inconclusive"  # below the evaluation noise floor


def _ev(method, task, seed, gains):
    before = {"target_id": 0.4, "target_ood": 0.2, "knowledge": 0.0, "retention": 0.9}
    after = {k: before[k] + gains.get(k, 0.0) for k in before}
    return {"method": method, "task": task, "seed": seed, "save_dtype": "bfloat16", "weight_decay": 0.0,
            "before": before, "after": after}


@pytest.fixture
def zoo(tmp_path):
    """Two seeds of sft/dft/grpo/es on target and sft/dft on knowledge, with planted update sizes."""
    base = ckpt.llama_state()
    b = ckpt.save(base, tmp_path / "base")
    runs, evals = {}, {}
    scale = {"sft": (0.9, 1e-2), "dft": (0.9, 1e-2), "grpo": (0.1, 1e-3), "es": (1.0, 5e-2)}
    gains = {("dft", "target"): {"target_id": 0.3, "target_ood": 0.1}, ("sft", "target"): {"target_id": 0.1},
             ("sft", "knowledge"): {"knowledge": 0.5}, ("dft", "knowledge"): {"knowledge": 0.05}}
    for seed in (0, 1):
        for method, task in [("sft", "target"), ("dft", "target"), ("grpo", "target"), ("es", "target"),
                             ("sft", "knowledge"), ("dft", "knowledge")]:
            name = zoo_name(method, task, seed)
            frac, s = scale[method]
            runs[name] = ckpt.save(ckpt.perturb(base, frac=frac, scale=s, seed=100 * seed + len(runs)), tmp_path / name)
            evals[name] = _ev(method, task, seed, gains.get((method, task), {}))
    return updelta.compare(b, runs, spectral="off"), load_evals(evals)


def test_claims_on_a_planted_zoo(zoo):
    result, evals = zoo
    by = {c.claim.split(" (")[0]: c for c in claims(result, evals)}
    dft_target = next(c for c in by.values() if c.claim.startswith("DFT improves more"))
    assert dft_target.verdict == "reproduced" and "+0.200" in dft_target.text
    knowledge = next(c for c in by.values() if c.claim.startswith("SFT absorbs"))
    assert knowledge.verdict == "reproduced"
    es = next(c for c in by.values() if c.claim.startswith("ES updates"))
    s = result.summary.set_index("run")["delta_fro"]
    ratio = s["es-target-s0"] / s["grpo-target-s0"]
    assert f"{ratio:.3g}" in es.text and es.verdict == "reproduced"
    sparse = next(c for c in by.values() if c.claim.startswith("RL (GRPO)"))
    assert sparse.verdict == "reproduced" and "bfloat16 storage, weight decay 0.0" in sparse.text
    rl = next(c for c in by.values() if c.claim.startswith("Separate RL"))
    cos = result.pairs_summary.set_index(["run_a", "run_b"]).loc[("grpo-target-s0", "grpo-target-s1"), "delta_cos"]
    assert f"{cos:.3f}" in rl.text


def test_one_seed_is_always_inconclusive(zoo):
    result, evals = zoo
    one = {k: v for k, v in evals.items() if k.endswith("s0")}
    sub = updelta.Result(**{**result.__dict__, "meta": {**result.meta, "run_order": list(one)}})
    for c in claims(sub, one):
        assert c.verdict == "inconclusive", c
    assert len(claims(sub, one)) >= 5


def test_spearman_known_values():
    from updelta.demo.claims import spearman
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(0.9486832980505138)  # scipy.stats.spearmanr
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3])) and math.isnan(spearman([1, 2], [1, 2]))


def test_precision_and_from_sft_claims(tmp_path):
    """Planted precision study: GRPO bf16 touches 10% of the elements, fp32 storage and 10x lr 90%: the precision
    claim is reproduced with two seeds and states all three conventions; GRPO from SFT (measured against the SFT
    checkpoint through `run_bases`, as the demo does) is sparser than SFT."""
    base = ckpt.llama_state()
    b = ckpt.save(base, tmp_path / "base")
    runs, evals, starts = {}, {}, {}
    frac = {"grpo": 0.1, "grpofp32": 0.9, "grpolr10": 0.9, "sft": 0.9, "sftfp32": 0.9}
    for seed in (0, 1):
        for method, f in frac.items():
            name = zoo_name(method, "target", seed)
            runs[name] = ckpt.save(ckpt.perturb(base, frac=f, seed=10 * seed + len(runs)), tmp_path / name)
            evals[name] = _ev(method, "target", seed, {})
        sft = ckpt.perturb(base, frac=0.9, seed=50 + seed)
        name = zoo_name("grposft", "target", seed)
        runs[name] = ckpt.save(ckpt.perturb(sft, frac=0.05, seed=60 + seed), tmp_path / name)
        starts[name] = ckpt.save(sft, tmp_path / f"sft-start-{seed}")
        evals[name] = _ev("grpo", "target", seed, {})
    view = updelta.compare(b, runs, spectral="off", run_bases=starts)
    own = view.summary[view.summary["run"].isin(list(starts))]
    assert set(view.runs) == set(runs) and len(own) == len(starts)
    by = {c.claim: c for c in claims(view, load_evals(evals))}
    prec = next(c for k, c in by.items() if k.startswith("RL's apparent sparsity"))
    assert prec.verdict == "reproduced"
    assert all(f"{label}: exact" in prec.text for label in ("GRPO bf16", "GRPO fp32", "GRPO 10x lr", "SFT fp32"))
    s = own.set_index("run")["sparsity_atol"]
    from_sft = next(c for k, c in by.items() if k.startswith("RL started from an SFT checkpoint"))
    assert from_sft.verdict == "reproduced" and f"{100 * s.mean():.1f}%" in from_sft.text
    assert 0.9 < s.min()  # measured against the SFT checkpoint: only the planted 5% moved
