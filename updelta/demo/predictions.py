"""updelta's predictions from the DFT paper's mechanism, tested on the weights (docs/claims.md, Predictions).

Wu et al. (arXiv 2508.05629) say SFT's gradient carries an importance weight 1/p(y*|x) that over-concentrates the
update on low-probability target tokens, and that DFT (each token's loss times its own detached probability)
removes it. What that predicts for the weights, on the knowledge task (new facts: low-probability targets) and on
the target task, SFT against DFT of the same seed (these are updelta's predictions, never the paper's figures):

- concentration: SFT's update is more concentrated than DFT's, by size-free figures of named tensors
  (docs/metrics.md, Where an update sits): the top-1% share and the Gini of the token rows of the embedding and
  the unembedding (`lm_head`, when untied), and of the neuron columns of the last layer's `down_proj`. One claim
  per (task, tensor); each figure is judged by the verdict rule (`claim_rules.rule`) and the claim's verdict is
  theirs when both agree, else `inconclusive`;
- the logit lens: SFT's update directions single out the training targets' tokens more than DFT's. For every
  direction of every output-side update (`Result.lens`: the top and the bottom tokens, so both ends of a
  direction count and its sign does not matter), the share of token ids that are training targets (ids of the
  task's training completions, `token_sets`) less the share that belong to a frequency-matched random control set
  of the same size; per seed the difference SFT - DFT of that excess share.

No published size exists for either: `reproduced` means the sign holds beyond noise (`claim_rules.NO_SIZE`).
"""
from __future__ import annotations

import math
import random
import re
from collections import Counter

from updelta.demo import claim_rules as cr
from updelta.demo.claim_rules import Claim

WHU = "Wu et al. 2025 (arXiv 2508.05629): SFT's 1/p weighting, removed by DFT (mechanism); updelta's prediction"
TASKS = ("knowledge", "target")
FIGURES = {"row": ("row_top1_share", "row_gini"), "col": ("col_top1_share", "col_gini")}
CONTROL_SEED = 0
CONTROL_NEAREST = 3  # the control id for a target id is drawn from the 3 unused non-target ids nearest in frequency


def named_tensors(result) -> list[tuple[str, str, str]]:
    """(label, tensor name, axis) of the tensors the concentration predictions read: the embedding's and the untied
    unembedding's token rows, and the neuron columns of the last layer's down_proj."""
    names = list(dict.fromkeys(result.tensors["name"]))
    out = []
    emb = next((n for n in names if n.endswith("embed_tokens.weight")), None)
    if emb:
        out.append(("embedding", emb, "row"))
    head = next((n for n in names if n.endswith("lm_head.weight")), None)
    if head:
        out.append(("unembedding", head, "row"))
    downs = [(int(m[1]), n) for n in names if (m := re.search(r"layers\.(\d+)\.mlp\.down_proj\.weight$", n))]
    if downs:
        layer, name = max(downs)
        out.append((f"last down_proj (layer {layer})", name, "col"))
    return out


def _value(result, run: str, name: str, col: str) -> float:
    t = result.tensors
    if col not in t.columns:
        return math.nan
    v = t.loc[(t["run"] == run) & (t["name"] == name), col]
    return float(v.iloc[0]) if len(v) and v.iloc[0] is not None and not _isnan(v.iloc[0]) else math.nan


def _isnan(x) -> bool:
    try:
        return math.isnan(float(x))
    except (TypeError, ValueError):
        return True


def _pairs(idx, task: str) -> list[tuple[int, str, str]]:
    sft, dft = idx.get(("sft", task), {}), idx.get(("dft", task), {})
    return [(s, sft[s], dft[s]) for s in sorted(set(sft) & set(dft))]


def _settings(evals, pairs, task) -> dict:
    return cr.settings(evals, {f"sft-{task}": [p[1] for p in pairs], f"dft-{task}": [p[2] for p in pairs]})


def concentration_claims(result, evals, idx) -> list[Claim]:
    out = []
    tensors = named_tensors(result)
    for task in TASKS:
        pairs = _pairs(idx, task)
        if not pairs:
            continue
        st = _settings(evals, pairs, task)
        for label, name, axis in tensors:
            figs, verdicts, parts = {}, [], []
            for col in FIGURES[axis]:
                sft = [_value(result, p[1], name, col) for p in pairs]
                dft = [_value(result, p[2], name, col) for p in pairs]
                diffs = [a - b for a, b in zip(sft, dft)]
                v = cr.rule(diffs)
                verdicts.append(v)
                figs[col] = {"sft": sft, "dft": dft, "diffs": diffs, "verdict": v}
                parts.append(f"{col}: sft {', '.join(f'{x:.4f}' for x in sft)}, dft {', '.join(f'{x:.4f}' for x in dft)}"
                             f" (sft - dft per seed {', '.join(f'{d:+.4f}' for d in diffs)}: {v})")
            verdict = verdicts[0] if len(set(verdicts)) == 1 else "inconclusive"
            unit = "token rows" if axis == "row" else "neuron columns"
            out.append(cr.make(
                f"SFT's update is more concentrated than DFT's in the {label} ({unit}, {task} task)", WHU, [],
                f"{name}: " + "; ".join(parts) + f"; settings: {cr.settings_text(st)}",
                f"per seed sft - dft > 0 beyond noise for both the top-1% share and the Gini of the {unit} "
                f"(both must agree); {cr.NO_SIZE}",
                verdict=verdict, settings=st, kind="prediction",
                measured={"tensor": name, "axis": axis, "seeds": [p[0] for p in pairs], "figures": figs}))
    return out


def lens_share(result, run: str, ids: set, control: set) -> tuple[float, float, int]:
    """(share of the run's lens tokens, both ends of every direction, that are in `ids`; the same for `control`;
    how many tokens)."""
    lens = result.lens
    if lens is None or lens.empty:
        return math.nan, math.nan, 0
    toks = [int(t) for t in lens.loc[lens["run"] == run, "token_id"]]
    if not toks:
        return math.nan, math.nan, 0
    return sum(t in ids for t in toks) / len(toks), sum(t in control for t in toks) / len(toks), len(toks)


def _share_noise(rows: list[dict]) -> float:
    """Binomial sampling error of one seed's difference of excess shares (four shares of n lens tokens each, taken
    as independent): sqrt(2 (p_t (1 - p_t) + p_c (1 - p_c)) / n) at the runs' mean shares and smallest n."""
    ok = [r for r in rows if r["tokens"]]
    if not ok:
        return 0.0
    pt = cr.mean([r["target_share"] for r in ok])
    pc = cr.mean([r["control_share"] for r in ok])
    n = min(r["tokens"] for r in ok)
    return math.sqrt(2 * (pt * (1 - pt) + pc * (1 - pc)) / n)


def lens_claims(result, evals, idx, tokens: dict | None) -> list[Claim]:
    if not tokens or result.lens is None or result.lens.empty:
        return []
    out = []
    for task in TASKS:
        pairs = _pairs(idx, task)
        sets = tokens.get(task)
        if not pairs or not sets:
            continue
        ids, control = set(sets["ids"]), set(sets["control"])
        rows = {}
        for _, *runs in pairs:
            for r in runs:
                t, c, n = lens_share(result, r, ids, control)
                rows[r] = {"target_share": t, "control_share": c, "excess": t - c, "tokens": n}
        diffs = [rows[a]["excess"] - rows[b]["excess"] for _, a, b in pairs]
        noise = _share_noise([rows[r] for _, *runs in pairs for r in runs])
        st = _settings(evals, pairs, task)
        text = (f"excess share of training-target token ids among the lens tokens (both ends of every direction of "
                f"every output-side update; {len(ids)} target ids, {len(control)} frequency-matched control ids): "
                + ", ".join(f"{r} {v['target_share']:.3f} - {v['control_share']:.3f} = {v['excess']:+.3f} "
                            f"({v['tokens']} tokens)" for r, v in rows.items())
                + f"; sft - dft per seed {', '.join(f'{d:+.3f}' for d in diffs)} (sampling noise of a seed's "
                  f"difference ±{noise:.3f}); settings: {cr.settings_text(st)}")
        out.append(cr.make(f"SFT's logit-lens directions single out the training targets' tokens more than DFT's "
                           f"({task} task)", WHU, diffs, text,
                           f"per seed sft - dft excess share > 0 beyond noise; {cr.NO_SIZE}", noise=noise, settings=st,
                           kind="prediction",
                           measured={"runs": rows, "seeds": [p[0] for p in pairs], "target_ids": sorted(ids),
                                     "control_ids": sorted(control), "control_rule": sets.get("rule")}))
    return out


def prediction_claims(result, evals, idx, tokens: dict | None = None) -> list[Claim]:
    """The concentration and logit-lens predictions (module docstring) for the zoo's SFT/DFT pairs."""
    return concentration_claims(result, evals, idx) + lens_claims(result, evals, idx, tokens)


def control_ids(targets: list[int], counts: Counter, vocab: int, exclude: set, seed: int = CONTROL_SEED) -> list[int]:
    """A frequency-matched random control set: for each target id (most frequent first), one unused non-target id
    drawn (seeded) from the `CONTROL_NEAREST` nearest in log(1 + count) (ties: the lower id); fewer when the
    vocabulary runs out."""
    import numpy as np  # loaded only on this path

    rng = random.Random(seed)
    logc = np.log1p(np.array([counts[i] for i in range(vocab)], dtype=np.float64))
    free = np.ones(vocab, dtype=bool)
    free[[i for i in set(targets) | set(exclude) if 0 <= i < vocab]] = False
    out = []
    for t in sorted(targets, key=lambda i: (-counts[i], i)):
        ids = np.flatnonzero(free)
        if ids.size == 0:
            break
        dist = np.abs(logc[ids] - math.log1p(counts[t]))
        near = ids[np.lexsort((ids, dist))[:CONTROL_NEAREST]]
        pick = int(rng.choice(near.tolist()))
        free[pick] = False
        out.append(pick)
    return out


def token_sets(base) -> dict:
    """{task: {"ids": training-target token ids, "control": frequency-matched control ids, "rule": how}} for the
    suite of the base's tokenizer (`train.suites.build_suite`): the target ids are the ids of the task's training
    completions; frequencies are counted over every training prompt and completion of both tasks; special tokens
    are left out of both sets."""
    from transformers import AutoTokenizer  # optional extra: train

    from updelta.train.suites import build_suite  # torch: loaded only on this path

    tok = AutoTokenizer.from_pretrained(base)
    suite = build_suite(tok)
    special = set(tok.all_special_ids)
    counts: Counter = Counter()
    completions: dict[str, set] = {}
    for task, items in suite.train.items():
        completions[task] = set()
        for x in items:
            p = tok(x.prompt, add_special_tokens=False)["input_ids"]
            c = tok(x.completion, add_special_tokens=False)["input_ids"]
            counts.update(p)
            counts.update(c)
            completions[task].update(c)
    out = {}
    for task, ids in completions.items():
        targets = sorted(ids - special)
        out[task] = {"ids": targets, "control": control_ids(targets, counts, len(tok), special),
                     "rule": f"per target id one unused non-target id drawn (seed {CONTROL_SEED}) from the "
                             f"{CONTROL_NEAREST} nearest in log(1 + count) over both tasks' training text"}
    return out
