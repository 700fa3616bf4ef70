"""Claims from the literature (methods.md, metrics.md) tested on a zoo of runs of one base.

Pure functions: a compare `Result` and the runs' evaluations in, `Claim`s out. Each claim is
stated as `reproduced`, `not reproduced` or `inconclusive`, with the per-seed numbers and their
spread, never as an interpretation the numbers do not support.

Verdict rule (the same for every claim): a claim compares two quantities per seed (x_s for the
method the paper favours, y_s for the other). It is `reproduced` when at least `MIN_SEEDS` seeds
are available, every seed's difference x_s - y_s has the claimed sign, and the mean difference
exceeds its noise floor (twice the larger of the seeds' standard error and, for accuracies, the
evaluation sampling error sqrt(2 p (1 - p) / n_items)); `not reproduced` when the same holds
with the opposite sign; `inconclusive` otherwise (in particular always with one seed: one training
seed cannot separate a method from its seed).
"""
from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass

MIN_SEEDS = 2
RUN_NAME = re.compile(r"^(?P<method>[a-z][a-z0-9]*)-(?P<task>target|knowledge)-s(?P<seed>\d+)$")


@dataclass(frozen=True)
class Claim:
    """One published claim, its verdict on this zoo, and the numbers behind it."""

    claim: str  # what the literature says
    source: str
    verdict: str  # reproduced | not reproduced | inconclusive
    text: str  # the measured numbers, per seed and mean +- std


def zoo_name(method: str, task: str, seed: int) -> str:
    """The run name the demo gives a run: `sft-target-s0`."""
    return f"{method}-{task}-s{seed}"


def _index(runs: list[str]) -> dict[tuple[str, str], dict[int, str]]:
    """(method, task) -> {seed: run name} for runs named like `zoo_name`."""
    out: dict[tuple[str, str], dict[int, str]] = {}
    for r in runs:
        m = RUN_NAME.match(r)
        if m:
            out.setdefault((m["method"], m["task"]), {})[int(m["seed"])] = r
    return out


def _spread(xs: list[float], pct: bool = False) -> str:
    """mean ± std over seeds (percent points for shares)."""
    if not xs:
        return "no runs"
    k = 100.0 if pct else 1.0
    mean = statistics.fmean(xs) * k
    m = f"{mean:.1f}%" if pct else f"{mean:+.3g}"
    if len(xs) == 1:
        return f"{m} (1 seed)"
    sd = statistics.stdev(xs) * k
    return f"{m} ± {sd:.1f}{' points' if pct else ''} (mean ± std over {len(xs)} seeds)" if pct else \
        f"{m} ± {sd:.2g} (mean ± std over {len(xs)} seeds)"


def verdict(diffs: list[float], noise: float = 0.0) -> str:
    """The verdict of paired differences (claimed direction: positive); see the module docstring."""
    if len(diffs) < MIN_SEEDS:
        return "inconclusive"
    mean = statistics.fmean(diffs)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    floor = 2 * max(se, noise)
    if all(d > 0 for d in diffs) and mean > floor:
        return "reproduced"
    if all(d < 0 for d in diffs) and -mean > floor:
        return "not reproduced"
    return "inconclusive"


def _eval_noise(evals: dict, runs: list[str], split: str) -> float:
    """Sampling error of a difference of two accuracies measured on n items: sqrt(2 p (1 - p) / n)."""
    ps, ns = [], []
    for r in runs:
        e = evals.get(r)
        if e is None or split not in e.after:
            continue
        ps.append(e.after[split])
        n = (e.extra.get("options") or {}).get("eval_items") if isinstance(e.extra, dict) else None
        ns.append(int(n) if isinstance(n, (int, float)) and n else 200)
    if not ps:
        return 0.0
    p = statistics.fmean(ps)
    return math.sqrt(2 * max(p * (1 - p), 1e-4) / min(ns))


def _gain_claim(idx, evals, a: tuple[str, str], b: tuple[str, str], split: str, claim: str, source: str) -> Claim:
    seeds = sorted(set(idx.get(a, {})) & set(idx.get(b, {})))
    pairs = [(idx[a][s], idx[b][s]) for s in seeds if idx[a][s] in evals and idx[b][s] in evals]
    if not pairs:
        return Claim(claim, source, "inconclusive", f"no evaluated {a[0]}/{b[0]} runs on the {a[1]} task")
    ga = [evals[x].gains.get(split, math.nan) for x, _ in pairs]
    gb = [evals[y].gains.get(split, math.nan) for _, y in pairs]
    diffs = [x - y for x, y in zip(ga, gb)]
    noise = _eval_noise(evals, [r for p in pairs for r in p], split)
    text = (f"{split} gain (after - before): {a[0]} {_spread(ga)}, {b[0]} {_spread(gb)}; "
            f"difference {a[0]} - {b[0]} per seed: {', '.join(f'{d:+.3f}' for d in diffs)}; "
            f"evaluation noise of a difference ±{noise:.3f}")
    return Claim(claim, source, verdict(diffs, noise), text)


def _geometry(result, run: str, col: str) -> float:
    row = result.summary[result.summary["run"] == run]
    return float(row[col].iloc[0]) if len(row) else math.nan


def _facts(evals, run: str) -> str:
    e = evals.get(run)
    if e is None:
        return ""
    return f"{e.save_dtype or '?'} storage, weight decay {e.weight_decay if e.weight_decay is not None else '?'}"


def claims(result, evals: dict) -> list[Claim]:
    """Every claim of methods.md that a zoo of sft/dft/grpo/es runs of one base can test."""
    idx = _index(result.runs)
    out = [
        _gain_claim(idx, evals, ("dft", "target"), ("sft", "target"), "target_id",
                    "DFT improves more than SFT on a task where the base has some competence",
                    "Wu et al. 2025 (arXiv 2508.05629), Table 1"),
        _gain_claim(idx, evals, ("dft", "target"), ("sft", "target"), "target_ood",
                    "DFT generalises better than SFT (harder, out-of-distribution split)",
                    "Wu et al. 2025 (arXiv 2508.05629)"),
        _gain_claim(idx, evals, ("sft", "knowledge"), ("dft", "knowledge"), "knowledge",
                    "SFT absorbs new facts better than DFT (their Natural Questions result)",
                    "Wu et al. 2025 (arXiv 2508.05629): NQ base 31.24, SFT 36.62, DFT 30.14"),
    ]
    # ES update norm vs GRPO's (ratio of whole-model ||D||_F, compared on a log scale).
    seeds = sorted(set(idx.get(("es", "target"), {})) & set(idx.get(("grpo", "target"), {})))
    if seeds:
        es_n = [_geometry(result, idx[("es", "target")][s], "delta_fro") for s in seeds]
        gr_n = [_geometry(result, idx[("grpo", "target")][s], "delta_fro") for s in seeds]
        ratios = [e / g if g > 0 else math.inf for e, g in zip(es_n, gr_n)]
        logs = [math.log10(r) for r in ratios if 0 < r < math.inf]
        text = (f"||D||_F per seed: es {', '.join(f'{x:.3g}' for x in es_n)}, grpo {', '.join(f'{x:.3g}' for x in gr_n)}; "
                f"ratio es/grpo {', '.join(f'{r:.3g}' for r in ratios)} (published: ~1000)")
        v = verdict(logs) if len(logs) == len(ratios) else "inconclusive"
        if len(logs) < len(ratios):
            text += "; a zero GRPO update leaves the ratio undefined"
        out.append(Claim("ES updates have a much larger L2 norm than GRPO's",
                         "Abdi et al. 2026 (arXiv 2601.20861)", v, text))
    # RL update sparsity vs SFT's (atol convention, as Mukherjee et al. measure it).
    seeds = sorted(set(idx.get(("grpo", "target"), {})) & set(idx.get(("sft", "target"), {})))
    if seeds:
        g = [_geometry(result, idx[("grpo", "target")][s], "sparsity_atol") for s in seeds]
        f = [_geometry(result, idx[("sft", "target")][s], "sparsity_atol") for s in seeds]
        atol = result.info.options.atol
        r0, r1 = idx[("grpo", "target")][seeds[0]], idx[("sft", "target")][seeds[0]]
        text = (f"share of elements unchanged (|D| <= {atol:g}): grpo {_spread(g, pct=True)}, sft {_spread(f, pct=True)} "
                f"(grpo: {_facts(evals, r0)}; sft: {_facts(evals, r1)}); published 68.5-96% for RL, 6-15% for SFT, "
                f"RL measured from an SFT checkpoint")
        out.append(Claim("RL (GRPO) updates are much sparser than SFT updates",
                         "Mukherjee et al. 2025 (arXiv 2505.11711)",
                         verdict([a - b for a, b in zip(g, f)]), text))
    from_sft = sparsity_from_sft_claim(result, idx)
    if from_sft is not None:
        out.append(from_sft)
    precision = precision_claim(result, idx)
    if precision is not None:
        out.append(precision)
    out += direction_claims(result, idx)
    razor = forgetting_claim(result, evals)
    if razor is not None:
        out.append(razor)
    return out


def sparsity_from_sft_claim(result, idx) -> Claim | None:
    """Mukherjee et al.'s setting: GRPO started from the SFT checkpoint (`grposft`, measured against that
    checkpoint) against SFT (measured against the base), atol convention."""
    seeds = sorted(set(idx.get(("grposft", "target"), {})) & set(idx.get(("sft", "target"), {})))
    if not seeds:
        return None
    g = [_geometry(result, idx[("grposft", "target")][s], "sparsity_atol") for s in seeds]
    f = [_geometry(result, idx[("sft", "target")][s], "sparsity_atol") for s in seeds]
    text = (f"share of elements unchanged (|D| <= {result.info.options.atol:g}): GRPO from SFT (against the SFT "
            f"checkpoint) {_spread(g, pct=True)}, SFT (against the base) {_spread(f, pct=True)}; published 68.5-96% "
            f"for RL, 6-15% for SFT")
    return Claim("RL started from an SFT checkpoint updates a small subnetwork (much sparser than SFT)",
                 "Mukherjee et al. 2025 (arXiv 2505.11711)", verdict([a - b for a, b in zip(g, f)]), text)


PRECISION_RUNS = (("grpo", "GRPO bf16"), ("grpofp32", "GRPO fp32"), ("grpolr10", "GRPO 10x lr"),
                  ("sft", "SFT bf16"), ("sftfp32", "SFT fp32"))
CONVENTIONS = (("sparsity_exact", "exact"), ("sparsity_atol", "atol"), ("sparsity_rtol", "rtol"))


def precision_claim(result, idx) -> Claim | None:
    """Zhu et al.: much of RL's apparent sparsity is bf16 rounding, fading with fp32 storage or a higher lr. Per seed
    the difference is min(exact sparsity of GRPO bf16 - GRPO fp32, GRPO bf16 - GRPO 10x lr); every run's sparsity
    under the three conventions is in the text."""
    keys = [(m, "target") for m, _ in PRECISION_RUNS[:3]]
    seeds = sorted(set.intersection(*(set(idx.get(k, {})) for k in keys)))
    if not seeds:
        return None
    table = []
    for m, label in PRECISION_RUNS:
        runs = idx.get((m, "target"), {})
        if runs:
            table.append(f"{label}: " + ", ".join(
                f"{conv} {_spread([_geometry(result, runs[s], col) for s in seeds if s in runs], pct=True)}"
                for col, conv in CONVENTIONS))
    exact = {m: [_geometry(result, idx[(m, "target")][s], "sparsity_exact") for s in seeds] for m, _ in keys}
    diffs = [min(b - f, b - h) for b, f, h in zip(exact["grpo"], exact["grpofp32"], exact["grpolr10"])]
    return Claim("RL's apparent sparsity is largely bf16 rounding: it fades with fp32 storage or a 10x higher lr",
                 "Zhu et al. 2025, The Path Not Taken (arXiv 2511.08567): precision-induced sparsity", verdict(diffs),
                 "share of elements unchanged per convention: " + "; ".join(table))


def _ranks(xs: list[float]) -> list[float]:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(xs: list[float], ys: list[float]) -> float:
    """Rank correlation (average ranks for ties); nan when either side is constant or shorter than 3."""
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return math.nan
    rx, ry = _ranks(xs), _ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))


GEOMETRY = (("rel_delta", "rel_delta"), ("sparsity_atol", "sparsity"), ("erank", "stable/effective rank"))


def forgetting_claim(result, evals: dict) -> Claim | None:
    """RL's Razor: across one seed's runs, forgetting (retention lost) ranks with the forward KL to the base on the
    target prompts (eval.json `forgetting.kl_per_token`) better than with the update's geometry. Per seed the
    difference is rho(forgetting, KL) - rho(forgetting, rel_delta), judged by the verdict rule."""
    by_seed: dict[int, list[str]] = {}
    for r in result.runs:
        m = RUN_NAME.match(r)
        e = evals.get(r)
        kl = ((e.extra or {}).get("forgetting") or {}).get("kl_per_token") if e is not None else None
        if m and isinstance(kl, (int, float)) and "retention" in e.gains:
            by_seed.setdefault(int(m["seed"]), []).append(r)
    if not by_seed:
        return None
    diffs, parts = [], []
    for seed, runs in sorted(by_seed.items()):
        lost = [-evals[r].gains["retention"] for r in runs]
        rho_kl = spearman(lost, [evals[r].extra["forgetting"]["kl_per_token"] for r in runs])
        rhos = {label: spearman(lost, [_geometry(result, r, col) for r in runs]) for col, label in GEOMETRY
                if col in result.summary.columns}
        parts.append(f"seed {seed} ({len(runs)} runs): rho(forgetting, KL) {rho_kl:.2f}, "
                     + ", ".join(f"rho(forgetting, {k}) {v:.2f}" for k, v in rhos.items()))
        base_rho = rhos.get("rel_delta", math.nan)
        if not math.isnan(rho_kl) and not math.isnan(base_rho):
            diffs.append(rho_kl - base_rho)
    text = ("; ".join(parts) + ". Forgetting = retention lost (before - after); KL = E_x KL(pi_0 || pi) per token on "
            "the target prompts, teacher-forced on the base's greedy answers; a constant side gives nan")
    return Claim("Forgetting is predicted by the forward KL to the base on the new task, not by the size of the "
                 "weight change", "Shenfeld et al. 2025, RL's Razor (arXiv 2509.04259)", verdict(diffs), text)


def direction_claims(result, idx) -> list[Claim]:
    """Whether methods' updates point in similar directions: delta cosine between methods, and across seeds."""
    ps = result.pairs_summary
    if ps is None or ps.empty:
        return []
    cos = {(a, b): c for a, b, c in zip(ps["run_a"], ps["run_b"], ps["delta_cos"])}
    cos.update({(b, a): c for (a, b), c in list(cos.items())})
    parts = []
    methods = [k for k in idx if k[1] == "target"]
    for i, ka in enumerate(methods):
        for kb in methods[i + 1:]:
            seeds = sorted(set(idx[ka]) & set(idx[kb]))
            vals = [cos.get((idx[ka][s], idx[kb][s]), math.nan) for s in seeds]
            vals = [v for v in vals if not math.isnan(v)]  # no pair: runs measured against different bases
            if vals:
                parts.append(f"{ka[0]} vs {kb[0]}: {_spread(vals)}")
    out = []
    if parts:
        out.append(Claim("Different objectives move the weights in different directions (cosine of updates, "
                         "same seed, target task)", "metrics.md, Across runs (task-vector convention)",
                         "inconclusive", "; ".join(parts) + ". No published figure to test against: reported as "
                         "measured."))
    grpo = idx.get(("grpo", "target"), {})
    seeds = sorted(grpo)
    across = [cos.get((grpo[a], grpo[b]), math.nan) for i, a in enumerate(seeds) for b in seeds[i + 1:]]
    if across:
        v = verdict([0.2 - abs(c) for c in across])
        out.append(Claim("Separate RL runs' updates are near-orthogonal (about 90 degrees)",
                         "metrics.md, Across runs", v,
                         f"delta cos between GRPO seeds: {', '.join(f'{c:.3f}' for c in across)} "
                         f"(reproduced when every |cos| < 0.2)"))
    return out
