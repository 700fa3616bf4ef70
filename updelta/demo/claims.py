"""Claims from the literature (methods.md, metrics.md) tested on a zoo of runs of one base.

Pure functions: a compare `Result` and the runs' evaluations in, `Claim` records out (`updelta.demo.claim_rules`: each
claim's measurable form and size, fixed before the zoo runs and cited in docs/claims.md; the verdict rule
`reproduced` / `direction only` / `not reproduced` / `inconclusive`; the runs' settings), never an interpretation
the numbers do not support.

Paired differences: a claim compares two quantities per seed (x_s for the method the claim favours, y_s for the
other); the sign test takes the mean difference against twice the larger of the seeds' standard error and, for
accuracies, the evaluation sampling error sqrt(2 p (1 - p) / n_items). One training seed is always
`inconclusive`: it cannot separate a method from its seed.
"""
from __future__ import annotations

import math
import re
import statistics

from updelta.demo import claim_rules as cr
from updelta.demo.claim_rules import MIN_SEEDS, Claim, sign_verdict  # noqa: F401  (re-exported)
from updelta.demo.predictions import prediction_claims

RUN_NAME = re.compile(r"^(?P<method>[a-z][a-z0-9]*)-(?P<task>target|knowledge)-s(?P<seed>\d+)$")
OWN_SPLIT = {"target": "target_id", "knowledge": "knowledge"}  # the split that measures a task's gain


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


def verdict(diffs: list[float], noise: float = 0.0, size_ok: bool | None = None) -> str:
    """The verdict of paired differences (claimed direction: positive; `claim_rules.rule`)."""
    return cr.rule(diffs, noise, size_ok)


def _eval_noise(evals: dict, runs: list[str], split: str) -> float:
    """Sampling error of a difference of two accuracies measured on n items: sqrt(2 p (1 - p) / n)."""
    ps, ns = [], []
    for r in runs:
        e = evals.get(r)
        if e is None or split not in e.after:
            continue
        ps.append(e.after[split])
        ns.append(cr.eval_items(e, split))
    if not ps:
        return 0.0
    p = statistics.fmean(ps)
    return math.sqrt(2 * max(p * (1 - p), 1e-4) / min(ns))


def _group(idx, key: tuple[str, str], seeds) -> list[str]:
    return [idx[key][s] for s in seeds if s in idx.get(key, {})]


def _settings(evals, idx, keys, seeds) -> dict:
    return cr.settings(evals, {f"{m}-{t}": _group(idx, (m, t), seeds) for m, t in keys})


def _gain_claim(idx, evals, a: tuple[str, str], b: tuple[str, str], split: str, claim: str, source: str,
                threshold: str, size) -> Claim:
    """`size(mean gain of a, mean gain of b) -> bool` is the claim's size test."""
    seeds = sorted(set(idx.get(a, {})) & set(idx.get(b, {})))
    pairs = [(idx[a][s], idx[b][s]) for s in seeds if idx[a][s] in evals and idx[b][s] in evals]
    if not pairs:
        return cr.make(claim, source, [], f"no evaluated {a[0]}/{b[0]} runs on the {a[1]} task", threshold,
                       verdict="inconclusive")
    ga = [evals[x].gains.get(split, math.nan) for x, _ in pairs]
    gb = [evals[y].gains.get(split, math.nan) for _, y in pairs]
    se_a = [cr.gain_se(evals[x], split) for x, _ in pairs]
    se_b = [cr.gain_se(evals[y], split) for _, y in pairs]
    diffs = [x - y for x, y in zip(ga, gb)]
    noise = _eval_noise(evals, [r for p in pairs for r in p], split)
    ma, mb = cr.mean(ga), cr.mean(gb)
    ok = size(ma, mb) if not (math.isnan(ma) or math.isnan(mb)) else None
    text = (f"{split} gain (after - before): {a[0]} {_spread(ga)} (s.e. of one run's gain ±{cr.mean(se_a):.3f}), "
            f"{b[0]} {_spread(gb)} (±{cr.mean(se_b):.3f}); difference {a[0]} - {b[0]} per seed: "
            f"{', '.join(f'{d:+.3f}' for d in diffs)}; evaluation noise of a difference ±{noise:.3f}")
    st = _settings(evals, idx, (a, b), seeds)
    return cr.make(claim, source, diffs, text + f"; settings: {cr.settings_text(st)}", threshold, noise=noise,
                   size_ok=ok, settings=st,
                   measured={f"{a[0]}_gain": ga, f"{b[0]}_gain": gb, f"{a[0]}_gain_se": se_a,
                             f"{b[0]}_gain_se": se_b, "seeds": seeds, "split": split})


def _dft_ratio(ma: float, mb: float) -> bool:
    return ma >= cr.DFT_GAIN_RATIO * mb if mb > 0 else ma > 0


DFT_THRESHOLD = (f"DFT's mean gain >= {cr.DFT_GAIN_RATIO}x SFT's (the smallest DFT/SFT ratio of gains in Wu et al. "
                 f"Table 1, LLaMA-3.2-3B: (4.65 - 1.19) / (3.24 - 1.19))")


def _geometry(result, run: str, col: str) -> float:
    row = result.summary[result.summary["run"] == run]
    return float(row[col].iloc[0]) if len(row) else math.nan


def _facts(evals, run: str) -> str:
    e = evals.get(run)
    if e is None:
        return ""
    return f"{e.save_dtype or '?'} storage, weight decay {e.weight_decay if e.weight_decay is not None else '?'}"


def claims(result, evals: dict, tokens: dict | None = None) -> list[Claim]:
    """Every claim of methods.md that a zoo of sft/dft/grpo/es runs of one base can test, then updelta's predictions
    from the DFT paper's mechanism (`updelta.demo.predictions`; the lens ones need `tokens`, the training targets'
    token ids per task: `predictions.token_sets`)."""

    idx = _index(result.runs)
    out = [
        _gain_claim(idx, evals, ("dft", "target"), ("sft", "target"), "target_id",
                    "DFT improves more than SFT on a task where the base has some competence",
                    "Wu et al. 2025 (arXiv 2508.05629), Table 1", DFT_THRESHOLD, _dft_ratio),
        _gain_claim(idx, evals, ("dft", "target"), ("sft", "target"), "target_ood",
                    "DFT generalises better than SFT (harder, out-of-distribution split)",
                    "Wu et al. 2025 (arXiv 2508.05629), Table 1 (held-out benchmarks)", DFT_THRESHOLD, _dft_ratio),
        _gain_claim(idx, evals, ("sft", "knowledge"), ("dft", "knowledge"), "knowledge",
                    "SFT absorbs new facts better than DFT (their Natural Questions result)",
                    "Wu et al. 2025 (arXiv 2508.05629): NQ base 31.24, SFT 36.62, DFT 30.14",
                    f"SFT's mean gain exceeds DFT's by >= {100 * cr.NQ_GAP:.2f} points (NQ: SFT +5.38, DFT -1.10)",
                    lambda ma, mb: ma - mb >= cr.NQ_GAP),
    ]
    es = es_norm_claim(result, idx, evals)
    if es is not None:
        out.append(es)
    sparse = sparsity_claim(result, idx, evals, "grpo",
                            "RL (GRPO) updates are much sparser than SFT updates", "GRPO from the base")
    if sparse is not None:
        out.append(sparse)
    from_sft = sparsity_from_sft_claim(result, idx, evals)
    if from_sft is not None:
        out.append(from_sft)
    precision = precision_claim(result, idx, evals)
    if precision is not None:
        out.append(precision)
    out += direction_claims(result, idx, evals)
    razor = forgetting_claim(result, evals)
    if razor is not None:
        out.append(razor)
    out += prediction_claims(result, evals, idx, tokens)
    return out


def es_norm_claim(result, idx, evals) -> Claim | None:
    """Abdi et al.: ES's whole-model ||D||_F against GRPO's, compared on a log scale (per seed log10 of the
    ratio); size: the geometric mean ratio within an order of magnitude of ~1000 (`claim_rules.ES_RATIO`)."""
    seeds = sorted(set(idx.get(("es", "target"), {})) & set(idx.get(("grpo", "target"), {})))
    if not seeds:
        return None
    es_n = [_geometry(result, idx[("es", "target")][s], "delta_fro") for s in seeds]
    gr_n = [_geometry(result, idx[("grpo", "target")][s], "delta_fro") for s in seeds]
    ratios = [e / g if g > 0 else math.inf for e, g in zip(es_n, gr_n)]
    logs = [math.log10(r) for r in ratios if 0 < r < math.inf]
    lo, hi = cr.ES_RATIO
    gm = 10 ** statistics.fmean(logs) if logs else math.nan
    text = (f"||D||_F per seed: es {', '.join(f'{x:.3g}' for x in es_n)}, grpo {', '.join(f'{x:.3g}' for x in gr_n)}; "
            f"ratio es/grpo {', '.join(f'{r:.3g}' for r in ratios)} (geometric mean {gm:.3g}; published: ~1000)")
    complete = len(logs) == len(ratios)
    if not complete:
        text += "; a zero GRPO update leaves the ratio undefined"
    st = _settings(evals, idx, (("es", "target"), ("grpo", "target")), seeds)
    return cr.make("ES updates have a much larger L2 norm than GRPO's (~1000x)",
                   "Abdi et al. 2026 (arXiv 2601.20861)", logs if complete else [],
                   text + f"; settings: {cr.settings_text(st)}",
                   f"ratio es/grpo within an order of magnitude of ~1000 ({lo:g} to {hi:g}x, geometric mean over seeds)",
                   size_ok=(lo <= gm <= hi) if complete and logs else None, settings=st,
                   measured={"es_fro": es_n, "grpo_fro": gr_n, "ratio": ratios, "ratio_geomean": gm, "seeds": seeds},
                   **({} if complete else {"verdict": "inconclusive"}))


SPARSE_THRESHOLD = (f"RL's unchanged share >= {cr.SPARSE_FACTOR:g}x SFT's and >= {100 * cr.SPARSE_GAP:.0f} points "
                    f"above it (published: RL 68.5-96%, SFT 6-15%; the smallest gap 53.5 points)")


def sparsity_claim(result, idx, evals, rl: str, claim: str, label: str) -> Claim | None:
    """Mukherjee et al.: the share of elements unchanged (atol convention, as they measure it) of an RL run (`rl`:
    `grpo` from the base, `grposft` from the SFT checkpoint, measured against it) against SFT's; size:
    `SPARSE_THRESHOLD`."""
    seeds = sorted(set(idx.get((rl, "target"), {})) & set(idx.get(("sft", "target"), {})))
    if not seeds:
        return None
    g = [_geometry(result, idx[(rl, "target")][s], "sparsity_atol") for s in seeds]
    f = [_geometry(result, idx[("sft", "target")][s], "sparsity_atol") for s in seeds]
    atol = result.info.options.atol
    r0, r1 = idx[(rl, "target")][seeds[0]], idx[("sft", "target")][seeds[0]]
    mg, mf = cr.mean(g), cr.mean(f)
    ok = mg >= cr.SPARSE_FACTOR * mf and mg - mf >= cr.SPARSE_GAP if not (math.isnan(mg) or math.isnan(mf)) else None
    text = (f"share of elements unchanged (|D| <= {atol:g}): {label} {_spread(g, pct=True)}, SFT (against the base) "
            f"{_spread(f, pct=True)} (grpo: {_facts(evals, r0)}; sft: {_facts(evals, r1)}); published 68.5-96% for "
            f"RL, 6-15% for SFT, RL measured from an SFT checkpoint")
    st = _settings(evals, idx, ((rl, "target"), ("sft", "target")), seeds)
    return cr.make(claim, "Mukherjee et al. 2025 (arXiv 2505.11711)", [a - b for a, b in zip(g, f)],
                   text + f"; settings: {cr.settings_text(st)}", SPARSE_THRESHOLD, size_ok=ok, settings=st,
                   measured={f"{rl}_unchanged": g, "sft_unchanged": f, "atol": atol, "seeds": seeds})


def sparsity_from_sft_claim(result, idx, evals=None) -> Claim | None:
    """Mukherjee et al.'s setting: GRPO started from the SFT checkpoint (`grposft`, measured against that
    checkpoint) against SFT (measured against the base), atol convention."""
    return sparsity_claim(result, idx, evals or {}, "grposft",
                          "RL started from an SFT checkpoint updates a small subnetwork (much sparser than SFT)",
                          "GRPO from SFT (against the SFT checkpoint)")


PRECISION_RUNS = (("grpo", "GRPO bf16"), ("grpofp32", "GRPO fp32"), ("grpolr10", "GRPO 10x lr"),
                  ("sft", "SFT bf16"), ("sftfp32", "SFT fp32"))
CONVENTIONS = (("sparsity_exact", "exact"), ("sparsity_atol", "atol"), ("sparsity_rtol", "rtol"))


def precision_claim(result, idx, evals=None) -> Claim | None:
    """Zhu et al.: much of RL's apparent sparsity is bf16 rounding, fading with fp32 storage or a higher lr. Per seed
    the difference is min(exact sparsity of GRPO bf16 - GRPO fp32, GRPO bf16 - GRPO 10x lr); size: that drop is at
    least `PRECISION_SHARE` of GRPO bf16's sparsity ("most"). Every run's sparsity under the three conventions is in
    the text."""
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
    mb, md = cr.mean(exact["grpo"]), cr.mean(diffs)
    ok = md >= cr.PRECISION_SHARE * mb if not (math.isnan(mb) or math.isnan(md)) else None
    st = _settings(evals or {}, idx, [(m, "target") for m, _ in PRECISION_RUNS], seeds)
    return cr.make("RL's apparent sparsity is largely bf16 rounding: it fades with fp32 storage or a 10x higher lr",
                   "Zhu et al. 2025, The Path Not Taken (arXiv 2511.08567): precision-induced sparsity", diffs,
                   "share of elements unchanged per convention: " + "; ".join(table)
                   + f"; settings: {cr.settings_text(st)}",
                   f"the smaller drop (bf16 - fp32, bf16 - 10x lr) of exact sparsity >= {cr.PRECISION_SHARE:g} of GRPO "
                   f"bf16's sparsity (\"raising the lr makes most apparent sparsity vanish\")",
                   size_ok=ok, settings=st, measured={"exact": exact, "seeds": seeds})


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


def run_kl(e, task: str) -> tuple[float | None, float | None]:
    """(KL on the run's own task's prompts, KL on the other task's) from eval.json `forgetting` (None where not
    measured). Records before `by_split` measured `kl_per_token` on the target_id prompts for every run: that
    counts as a target run's own KL and as nothing for a knowledge run."""
    f = (e.extra or {}).get("forgetting") if e is not None and isinstance(e.extra, dict) else None
    if not isinstance(f, dict):
        return None, None
    by = {k: v.get("kl_per_token") for k, v in (f.get("by_split") or {}).items() if isinstance(v, dict)}
    by.setdefault(f.get("split", "target_id"), f.get("kl_per_token"))
    own = OWN_SPLIT.get(task)
    other = next((v for k, v in OWN_SPLIT.items() if k != task), None)

    def num(x):
        return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None

    return num(by.get(own)), num(by.get(other))


def forgetting_claim(result, evals: dict) -> Claim | None:
    """RL's Razor as published: forgetting (retention lost) ranks with the forward KL to the base measured on each
    run's OWN training task (`run_kl`: target_id prompts for a target run, knowledge prompts for a knowledge run)
    better than with the update's size. Per seed the difference is rho(forgetting, KL) - rho(forgetting,
    rel_delta) over that seed's runs; the noise of one rho over n runs is its null standard deviation 1/sqrt(n - 1)
    (so a difference's is sqrt(2 / (n - 1)), over S seeds / sqrt(S)). Size (updelta's form, no published size in
    docs/claims.md): rho(forgetting, KL) over all runs above twice its null standard deviation."""
    rows = []
    for r in result.runs:
        m = RUN_NAME.match(r)
        e = evals.get(r)
        if not m or e is None or "retention" not in e.gains:
            continue
        own, other = run_kl(e, m["task"])
        if own is not None:
            rows.append((r, int(m["seed"]), m["task"], -e.gains["retention"], own, other))
    if not rows:
        return None
    diffs, parts, per_seed = [], [], {}
    for seed in sorted({x[1] for x in rows}):
        runs = [x for x in rows if x[1] == seed]
        lost = [x[3] for x in runs]
        rho_kl = spearman(lost, [x[4] for x in runs])
        rhos = {label: spearman(lost, [_geometry(result, x[0], col) for x in runs]) for col, label in GEOMETRY
                if col in result.summary.columns}
        per_seed[seed] = {"n": len(runs), "rho_kl": rho_kl, **{f"rho_{k}": v for k, v in rhos.items()}}
        parts.append(f"seed {seed} (n = {len(runs)} runs): rho(forgetting, KL) {rho_kl:.2f}, "
                     + ", ".join(f"rho(forgetting, {k}) {v:.2f}" for k, v in rhos.items()))
        base_rho = rhos.get("rel_delta", math.nan)
        if not math.isnan(rho_kl) and not math.isnan(base_rho):
            diffs.append(rho_kl - base_rho)
    n = len(rows)
    pooled = spearman([x[3] for x in rows], [x[4] for x in rows])
    pooled_rel = spearman([x[3] for x in rows], [_geometry(result, x[0], "rel_delta") for x in rows])
    n_seed = min(v["n"] for v in per_seed.values())
    noise = math.sqrt(2 / (n_seed - 1)) / math.sqrt(max(len(diffs), 1)) if n_seed > 1 else math.inf
    floor = 2 / math.sqrt(n - 1) if n > 1 else math.inf
    ok = pooled > floor if not math.isnan(pooled) else None
    kl_text = ", ".join(f"{x[0]} {x[4]:.3g}" + (f" (other task {x[5]:.3g})" if x[5] is not None else "")
                        for x in rows)
    text = ("; ".join(parts) + f". All {n} runs: rho(forgetting, KL) {pooled:.2f}, rho(forgetting, rel_delta) "
            f"{pooled_rel:.2f} (null s.d. of a rho over {n} runs {1 / math.sqrt(max(n - 1, 1)):.2f}). "
            f"KL per token on each run's own task (target_id prompts for target runs, knowledge prompts for "
            f"knowledge runs), teacher-forced on the base's greedy answers: {kl_text}. Forgetting = retention lost "
            f"(before - after); a constant side gives nan")
    groups: dict[str, list[str]] = {}
    for x in rows:
        m = RUN_NAME.match(x[0])
        groups.setdefault(f"{m['method']}-{m['task']}", []).append(x[0])
    st = cr.settings(evals, groups)
    return cr.make("Forgetting is predicted by the forward KL to the base on the new task, not by the size of the "
                   "weight change", "Shenfeld et al. 2025, RL's Razor (arXiv 2509.04259)", diffs,
                   text + f"; settings: {cr.settings_text(st)}",
                   f"per seed rho(forgetting, KL on the run's own task) > rho(forgetting, rel_delta) beyond the "
                   f"noise of a rank correlation; size (updelta's form, no published size): rho(forgetting, KL) over "
                   f"all runs > 2/sqrt(n - 1) = {floor:.2f} (n = {n})",
                   noise=noise, size_ok=ok, settings=st,
                   measured={"n_runs": n, "rho_kl": pooled, "rho_rel_delta": pooled_rel, "per_seed": per_seed,
                             "runs": [{"run": x[0], "task": x[2], "forgetting": x[3], "kl_own_task": x[4],
                                       "kl_other_task": x[5]} for x in rows]})


def direction_claims(result, idx, evals=None) -> list[Claim]:
    """Whether methods' updates point in similar directions: delta cosine between methods, and across seeds."""
    ps = result.pairs_summary
    if ps is None or ps.empty:
        return []
    cos = {(a, b): c for a, b, c in zip(ps["run_a"], ps["run_b"], ps["delta_cos"])}
    cos.update({(b, a): c for (a, b), c in list(cos.items())})
    parts, measured = [], {}
    methods = [k for k in idx if k[1] == "target"]
    for i, ka in enumerate(methods):
        for kb in methods[i + 1:]:
            seeds = sorted(set(idx[ka]) & set(idx[kb]))
            vals = [cos.get((idx[ka][s], idx[kb][s]), math.nan) for s in seeds]
            vals = [v for v in vals if not math.isnan(v)]  # no pair: runs measured against different bases
            if vals:
                parts.append(f"{ka[0]} vs {kb[0]}: {_spread(vals)}")
                measured[f"{ka[0]} vs {kb[0]}"] = vals
    out = []
    if parts:
        out.append(cr.make("Different objectives move the weights in different directions (cosine of updates, "
                           "same seed, target task)", "metrics.md, Across runs (task-vector convention)", [],
                           "; ".join(parts) + ". No published figure to test against: reported as measured",
                           "none (no published figure)", verdict="inconclusive", measured={"delta_cos": measured}))
    grpo = idx.get(("grpo", "target"), {})
    seeds = sorted(grpo)
    across = [cos.get((grpo[a], grpo[b]), math.nan) for i, a in enumerate(seeds) for b in seeds[i + 1:]]
    if across:
        st = _settings(evals or {}, idx, (("grpo", "target"),), seeds)
        out.append(cr.make("Separate RL runs' updates are near-orthogonal (about 90 degrees)",
                           "metrics.md, Across runs", [cr.ORTHO_COS - abs(c) for c in across],
                           f"delta cos between GRPO seeds: {', '.join(f'{c:.3f}' for c in across)}; settings: "
                           f"{cr.settings_text(st)}",
                           f"every |cos| < {cr.ORTHO_COS:g} (updelta's form of 'near-orthogonal', no published "
                           f"figure)", settings=st, measured={"delta_cos": across}))
    return out
