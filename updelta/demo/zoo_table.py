"""The seed's question as a table (docs/claims.md, The trade-off table): for each method and task, over seeds, how
much the run gained on its own task, what it lost elsewhere, how far it moved (forward KL, update size, sparsity,
concentration), and the derived "just enough" figures.

    rows = run_rows(result, evals)        # one dict per zoo run (method, task, seed, ...)
    groups = group_rows(rows)             # one dict per (method, task): mean, std and n over seeds per column
    format_groups(groups)                 # a Markdown table, each mean ± std beside it

Per run: `gain` (after - before on the run's own task: target_id for a target run, knowledge for a knowledge run)
with its standard error `gain_se` (`claim_rules.gain_se`), `retention_change` (after - before on retention) with
`retention_se`, `kl` (forward KL per token to the base on the run's own task, `claims.run_kl`), `rel_delta`
(||D||_F / ||W0||_F, whole model), `sparsity` (atol convention), `concentration` (top-1% share of the token rows of
the unembedding, or of the embedding when the head is tied: `predictions.named_tensors`),
`gain_per_update` = gain / rel_delta and `retention_lost_per_gain` = (-retention_change) / gain (NaN unless the
gain is positive).
"""
from __future__ import annotations

import math
import statistics

from updelta.demo import claim_rules as cr
from updelta.demo.claims import OWN_SPLIT, RUN_NAME, run_kl
from updelta.demo.predictions import named_tensors

COLUMNS = ("gain", "retention_change", "kl", "rel_delta", "sparsity", "concentration", "gain_per_update",
           "retention_lost_per_gain")
LABELS = {"gain": "own-task gain", "retention_change": "retention change", "kl": "forward KL (own task)",
          "rel_delta": "rel update", "sparsity": "sparsity (atol)", "concentration": "top-1% token-row share",
          "gain_per_update": "gain / rel update", "retention_lost_per_gain": "retention lost / gain"}


def _num(v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def run_rows(result, evals: dict) -> list[dict]:
    """One row per zoo run (names like `sft-target-s0`), in the result's run order."""
    s = result.summary.set_index("run")
    t = result.tensors
    head = next(((n, ax) for label, n, ax in named_tensors(result) if label == "unembedding"), None) or \
        next(((n, ax) for label, n, ax in named_tensors(result) if label == "embedding"), None)
    rows = []
    for run in result.runs:
        m = RUN_NAME.match(run)
        if not m:
            continue
        e = evals.get(run)
        split = OWN_SPLIT[m["task"]]
        g = e.gains if e is not None else {}
        gain, ret = g.get(split, math.nan), g.get("retention", math.nan)
        own_kl, other_kl = run_kl(e, m["task"]) if e is not None else (None, None)
        conc = math.nan
        if head is not None and f"{head[1]}_top1_share" in t.columns:
            v = t.loc[(t["run"] == run) & (t["name"] == head[0]), f"{head[1]}_top1_share"]
            conc = _num(v.iloc[0]) if len(v) else math.nan
        rel = _num(s.loc[run, "rel_delta"]) if run in s.index else math.nan
        rows.append({
            "run": run, "method": m["method"], "task": m["task"], "seed": int(m["seed"]), "split": split,
            "gain": gain, "gain_se": cr.gain_se(e, split),
            "retention_change": ret, "retention_se": cr.gain_se(e, "retention"),
            "kl": own_kl if own_kl is not None else math.nan,
            "kl_other_task": other_kl if other_kl is not None else math.nan,
            "rel_delta": rel, "sparsity": _num(s.loc[run, "sparsity_atol"]) if run in s.index else math.nan,
            "concentration": conc,
            "gain_per_update": gain / rel if rel and rel > 0 and not math.isnan(gain) else math.nan,
            "retention_lost_per_gain": -ret / gain if gain > 0 and not math.isnan(ret) else math.nan,
            "settings": cr.run_settings(e),
        })
    return rows


def group_rows(rows: list[dict]) -> list[dict]:
    """Per (method, task), in first-seen order: n seeds, and per column its mean, std (n > 1) and the mean
    standard error of the runs' gain and retention change."""
    order: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        order.setdefault((r["method"], r["task"]), []).append(r)
    out = []
    for (method, task), rs in order.items():
        g = {"method": method, "task": task, "seeds": [r["seed"] for r in rs], "runs": [r["run"] for r in rs]}
        for c in COLUMNS:
            xs = [r[c] for r in rs if not math.isnan(r[c])]
            g[c] = statistics.fmean(xs) if xs else math.nan
            g[f"{c}_std"] = statistics.stdev(xs) if len(xs) > 1 else math.nan
            g[f"{c}_n"] = len(xs)
        g["gain_se"] = cr.mean([r["gain_se"] for r in rs])
        g["retention_se"] = cr.mean([r["retention_se"] for r in rs])
        g["settings"] = rs[0]["settings"]
        out.append(g)
    return out


def _cell(g: dict, c: str) -> str:
    m, sd = g[c], g[f"{c}_std"]
    if math.isnan(m):
        return "-"
    txt = f"{m:+.3f}" if c in ("gain", "retention_change") else f"{m:.3g}"
    if not math.isnan(sd):
        txt += f" ± {sd:.2g}"
    if c == "gain" and not math.isnan(g["gain_se"]):
        txt += f" (s.e. {g['gain_se']:.3f})"
    if c == "retention_change" and not math.isnan(g["retention_se"]):
        txt += f" (s.e. {g['retention_se']:.3f})"
    return txt


def format_groups(groups: list[dict]) -> str:
    """A Markdown table: one row per (method, task), mean ± std over seeds, a run's standard error beside the
    gain and the retention change."""
    head = ["method", "task", "seeds"] + [LABELS[c] for c in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        cells = [g["method"], g["task"], str(len(g["seeds"]))] + [_cell(g, c) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
