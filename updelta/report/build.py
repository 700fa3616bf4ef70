"""Build the report's `Document` from a `Result`, evaluations, gate results, findings and figures.

Reading order, top-down: what is compared, a table of contents, the summary (one row per run, unchanged runs
flagged, the gates column last), gates, findings, evaluations and spectral medians, where the update sits
(components, layers, heads and neurons, the logit lens), across runs, figures, provenance. Tables longer than
`LONG` rows are folded into <details> blocks so that the page stays short at many runs and layers."""
from __future__ import annotations

import math

import pandas as pd

from updelta.metrics import schema
from updelta.report.digest import claims_blocks, is_tabled, spectral_references, topic_blocks
from updelta.report.document import Bullets, Contents, Details, Document, Heading, Image, Para, Table
from updelta.report.gates import GRAMMAR
from updelta.report.lens import lens_blocks
from updelta.report.text import fmt
from updelta.report.where import where_blocks
from updelta.tables.aggregate import (
    SPARSITY_NA,
    aggregate_tensors,
    sparsity_cell,
    sparsity_left_out,
    towers_included,
    unchanged_runs,
)
from updelta.tables.evals import SPLIT_LABELS
from updelta.tables.meta import info as run_info

RUN_COLS = [(c, schema.fmt_of(c)) for c in schema.HEADLINE]
LONG = 16  # tables longer than this go into a <details> block
MATRIX_RUNS = 8  # more runs than this: no delta_cos matrix in the text (the figure has it)
CONV = "atol"  # the convention of the one-sided overlaps shown (Mukherjee et al. measure under atol)


def conventions(meta) -> str:
    o = run_info(meta).options
    return (f"Columns are metric names (usable in `--gate`). `rel_delta` = ||D||_F / ||W0||_F with D = W1 - W0; "
            f"`cos_delta_base` = cos(D, W0); whole-model figures are sums of squares over tensors. Sparsity = share "
            f"of elements **unchanged**: `exact` W1 == W0; `atol` |D| <= {o.atol:g} (Mukherjee et al. "
            f"2025); `rtol` |D| <= {o.eta:g} * max(|W0|, |W1|) (Zhu et al. 2025). The three "
            f"conventions are not comparable with each other.")


def _v(x, kind="g") -> str:
    if kind == "pct" and x is not None and not (isinstance(x, float) and math.isnan(x)):
        return f"{100 * x:.2f}%"
    return fmt(x, kind)


def _metric_table(df: pd.DataFrame, keys: list[str], extra_cols=(), flags=None, extra_vals=None,
                  numel: bool = True, labels: dict | None = None) -> Table:
    cols = [(c, k) for c, k in RUN_COLS if c in df.columns]
    header = keys + ["tensors"] + (["numel"] if numel else []) + [c for c, _ in cols] + list(extra_cols)
    rows = []
    for i, (_, r) in enumerate(df.iterrows()):
        row = [(labels or {}).get(r[k], fmt(r[k])) if k != "layer" else _layer(r[k]) for k in keys]
        row += [fmt(r["n_tensors"], "int")] + ([fmt(r["numel"], "int")] if numel else []) + \
            [sparsity_cell(_v(r[c], k), r) if c.startswith("sparsity_") else _v(r[c], k) for c, k in cols]
        if extra_vals is not None:
            row += extra_vals[i]
        rows.append(row)
    align = ["l"] * len(keys) + ["r"] * (len(header) - len(keys) - len(extra_cols)) + ["l"] * len(extra_cols)
    return Table(header, rows, align, flags)


def _layer(v) -> str:
    return "-" if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else str(int(v))


def _maybe_details(summary: str, table: Table, limit: int = LONG) -> list:
    return [Details(summary, [table])] if len(table.rows) > limit else [table]


def fold_long(blocks: list, limit: int = LONG) -> list:
    """Every table longer than `limit` rows that is not already folded goes into a <details> block."""
    out = []
    for b in blocks:
        if isinstance(b, Table) and len(b.rows) > limit:
            what = (b.caption or "").split(":")[0].strip("`* ") or ", ".join(b.header[:4]) + ", ..."
            out.append(Details(f"{what} ({len(b.rows)} rows)", [b]))
        else:
            out.append(b)
    return out


def runs_unchanged(result) -> list[str]:
    """The runs whose every tensor is bit-identical to the base (docs/metrics.md, Aggregates)."""
    return [r for r in unchanged_runs(result.tensors, towers_included(result.meta)) if r in result.runs]


# ---- sections ------------------------------------------------------------------------------------
def _q(v) -> str:
    return "?" if v is None else str(v)


def header_blocks(result) -> list:
    m = result.info
    base = m.base
    dt = ", ".join(base.dtypes)
    line = (f"updelta {_q(m.updelta_version)} · base `{_q(base.path)}` ({_q(base.format)}, "
            f"{fmt(base.n_params, 'int')} parameters, {dt}) · runs: "
            + ", ".join(f"**{r}** `{_q(m.run(r).path)}`" for r in result.runs))
    return [Para(line), Para(conventions(m))]


def gate_blocks(gate_results) -> list:
    if not gate_results:
        return []
    failed = [g for g in gate_results if not g.passed]
    status = (f"**FAIL**: {len(failed)} of {len(gate_results)} gate(s) failed." if failed
              else f"All {len(gate_results)} gate(s) pass.")
    rows, flags = [], []
    for g in gate_results:
        for r in g.rows:
            rows.append([f"`{g.gate.expr}`", r["subject"], _v(r["value"]), "pass" if r["passed"] else "**FAIL**"])
            flags.append(None if r["passed"] else "fail")
    blocks = [Heading("Gates"), Para(status), Table(["gate", "subject", "value", "result"], rows,
                                                   ["l", "l", "r", "l"], flags)]
    items = []
    for g in failed:
        offs = g.offenders
        shown = []
        for o in offs[:20]:
            who = o.get("run") or o.get("pair")
            shown.append(f"{who} `{o['name']}` = {_v(o['value'])}" if o.get("name") else f"{who} = {_v(o['value'])}")
        more = f" (+{len(offs) - 20} more in summary.json)" if len(offs) > 20 else ""
        items.append(f"`{g.gate.expr}` fails for: " + "; ".join(shown) + more)
    if items:
        blocks.append(Bullets(items))
    blocks.append(Para(f"Gate grammar: `[AGG:]METRIC OP VALUE[@SELECTOR]` ({GRAMMAR.split('; ', 1)[1]})."))
    return blocks


TOPICS = {"sparsity": "Share of elements unchanged", "norm": "Update size", "concentration": "Where the update sits",
          "rank": "Rank of the updates", "nss": "Spectrum shift", "offprincipal": "Off-principal alignment",
          "intruders": "Intruder dimensions", "claim": "Claims from the literature, tested on these runs",
          "storage": "Storage precision", "pair": "Across runs", "evaluation": "Measured evaluations",
          "forgetting": "Forgetting", "pairing": "Not compared"}


def _finding_text(f, with_ref: bool) -> str:
    s = f"**{f.subject}**: {f.text}" if f.subject else f.text[:1].upper() + f.text[1:]
    return s + (f". Published: {f.reference}." if with_ref and f.reference else ".")


def finding_blocks(items, result=None, evals=None) -> list:
    """Findings: with `result`, the per-run findings as one table per topic (`digest.topic_blocks`) and the rest as
    bullets (per-run findings that a table of the report says are not repeated); the bullets grouped by topic, a
    reference shared by the whole group stated once beside it."""
    tables = []
    if result is not None:
        tables = topic_blocks(result, evals or {}, items)
        runs = set(result.runs)
        items = [f for f in items if not is_tabled(f, runs)]
    groups: list[list] = []
    for f in items:
        if groups and groups[-1][0].topic == f.topic:
            groups[-1].append(f)
        else:
            groups.append([f])
    out = []
    for g in groups:
        refs = {f.reference for f in g}
        shared = next(iter(refs)) if len(refs) == 1 else None
        if len(g) == 1:
            out.append(_finding_text(g[0], True))
            continue
        head = f"**{TOPICS.get(g[0].topic, g[0].topic)}**" + (f" (published: {shared})" if shared else "")
        out.append((head, [_finding_text(f, shared is None) for f in g]))
    return [Heading("Findings")] + tables + ([Bullets(out)] if out else [])


def _gate_marks(gate_results, pair: bool) -> dict[str, str]:
    """Per subject (run, or 'a/b' for pairs): the failed gates, or 'pass' when all of its gates pass."""
    seen: dict[str, list[str]] = {}
    for g in gate_results:
        if g.gate.is_pair != pair:
            continue
        for r in g.rows:
            seen.setdefault(r["subject"], [])
            if not r["passed"]:
                seen[r["subject"]].append(f"`{g.gate.expr}`")
    return {k: ("**FAIL** " + ", ".join(v)) if v else "pass" for k, v in seen.items()}


def summary_blocks(result, evals: dict, gate_results) -> list:
    s = result.summary.set_index("run").loc[[r for r in result.runs if r in set(result.summary["run"])]].reset_index()
    splits = []
    for e in evals.values():
        splits += [k for k in e.splits if k not in splits]
    extra_cols = [f"gain_{k}" for k in splits]
    marks = _gate_marks(gate_results, pair=False)
    if marks:
        extra_cols.append("gates")
    same = runs_unchanged(result)
    extra, flags = [], []
    for _, r in s.iterrows():
        e = evals.get(r["run"])
        row = [(f"{e.after[k] - e.before[k]:+.3f}" if e is not None and k in e.splits else "-") for k in splits]
        if marks:
            row.append(marks.get(r["run"], "-"))
        extra.append(row)
        flags.append("fail" if "FAIL" in marks.get(r["run"], "") else ("unchanged" if r["run"] in same else None))
    labels = {r: f"{r} (unchanged)" for r in same}
    t = _metric_table(s, ["run"], extra_cols, flags, extra, numel=False, labels=labels)
    t.align = t.aligns()[: len(t.header) - len(extra_cols)] + ["r"] * len(splits) + (["l"] if marks else [])
    t.fit = True
    blocks = [Heading("Summary (whole model)"), t]
    left = [sparsity_left_out(r) for _, r in s.iterrows()]
    if any(n for n, _ in left):
        blocks.append(Para(f"**Sparsity {'n/a' if any(e for _, e in left) else 'partial'}**: "
                           + (SPARSITY_NA + "; a share with '(k tensors n/a)' leaves those k tensors out."
                              if any(e for _, e in left) else "'(k tensors n/a)': k tensors without sparsity counts "
                              "(adapter factors, docs/adapters.md) are left out of the figure.")))
    if same:
        blocks.append(Para(f"**Unchanged**: {', '.join(same)}: every tensor is bit-identical to the base (W1 == W0 "
                           f"for every compared element). Their zeros are not repeated below: the figures say so "
                           f"once, and no median counts them (docs/metrics.md, Aggregates)."))
    if splits:
        blocks.append(Para("Gains are `after - before` accuracy per split from each run's evaluation file, shown "
                           "beside the geometry; neither is derived from the other."))
    return blocks


SPECTRAL = [(c, schema.fmt_of(c)) for c in ("stable_rank", "energy_rank_90", "energy_rank_99", "rank_frac", "erank",
                                               "nss", "angle_u_max_deg", "offprincipal_overlap",
                                               "offprincipal_chance", "intruders")]


def spectral_blocks(result, findings=()) -> list:
    s = result.summary
    cols = [(c, k) for c, k in SPECTRAL if c in s.columns and s[c].notna().any()]
    if not cols:
        return []
    o = result.info.options
    k = o.topk
    same = set(runs_unchanged(result))
    s = s[~s["run"].isin(same)]
    if s.empty:
        return []
    rows = [[r["run"], fmt(r.get("n_spectral"), "int"), fmt(r.get("n_spectral_unchanged"), "int")]
            + [_v(r[c], kind) for c, kind in cols] for _, r in s.iterrows()]
    return [Heading("Spectral (medians over changed 2-D updates)")] + spectral_references(findings) + [
            Para(f"Per run, the median over its changed 2-D tensors of each spectral figure of the update D "
                 f"(`--spectral {o.spectral}`, top {k} singular values); unchanged tensors (W1 == W0) have no "
                 f"spectrum and are left out, counted in `n_spectral_unchanged`. An energy rank of '-' means it "
                 f"was not reached within the top {k}."),
            Table(["run", "n_spectral", "n_spectral_unchanged"] + [c for c, _ in cols], rows)]


def eval_blocks(result, evals: dict) -> list:
    if not evals:
        return []
    splits = []
    for e in evals.values():
        splits += [k for k in e.splits if k not in splits]
    rows = []
    for r in result.runs:
        e = evals.get(r)
        if e is None:
            continue
        facts = ", ".join(x for x in [e.method, e.task and f"task {e.task}", e.seed is not None and f"seed {e.seed}",
                                      e.save_dtype and f"saved {e.save_dtype}",
                                      e.weight_decay is not None and f"wd {e.weight_decay:g}"] if x)
        rows.append([r, facts or "-"] + [(f"{e.before[k]:.3f} -> {e.after[k]:.3f} ({e.after[k] - e.before[k]:+.3f})"
                                          if k in e.splits else "-") for k in splits])
    t = Table(["run", "training"] + [SPLIT_LABELS.get(k, k) for k in splits], rows,
              ["l", "l"] + ["r"] * len(splits))
    return [Heading("Evaluations"),
            Para("Accuracy before -> after training (gain), measured by the trainer on each split. Retention is "
                 "measured here, not inferred from the weights: RL's Razor (Shenfeld et al. 2025) found forgetting "
                 "tracks the forward KL on the new task, not weight-change norms, sparsity or rank."), t]


def component_blocks(result) -> list:
    c = result.components
    order = {r: i for i, r in enumerate(result.runs)}
    c = c.assign(_o=c["run"].map(order)).sort_values(["_o"], kind="stable").drop(columns="_o")
    t = _metric_table(c, ["run", "component"])
    return [Heading("Per component")] + _maybe_details(f"{len(t.rows)} rows (run x component)", t, 2 * LONG)


def layer_blocks(result) -> list:
    t = result.tensors
    sub = t[t["layer"].notna()]
    if sub.empty:
        return []
    lay = aggregate_tensors(sub, ["run", "layer"])
    out = [Heading("Per layer"),
           Para("Each layer's tensors together (norms from sums of squares, sparsity element-weighted); "
                "embeddings, the final norm and the head belong to no layer and are in the component table.")]
    layers = sorted(int(x) for x in lay["layer"].dropna().unique())
    same = runs_unchanged(result)
    runs = [r for r in result.runs if r not in same]
    if not runs:
        return []
    if same:
        out.append(Para(f"Not listed: {', '.join(same)} (unchanged: bit-identical to the base)."))
    rows = []
    for metric, kind in (("rel_delta", "g"), ("sparsity_atol", "pct"), ("sparsity_exact", "pct")):
        for L in layers:
            row = [metric, str(L)]
            for r in runs:
                v = lay[(lay["run"] == r) & (lay["layer"] == L)]
                text = _v(float(v[metric].iloc[0]), kind) if len(v) else "-"
                row.append(sparsity_cell(text, v.iloc[0]) if len(v) and metric.startswith("sparsity_") else text)
            rows.append(row)
    tab = Table(["metric", "layer"] + runs, rows, ["l", "r"] + ["r"] * len(runs))
    out += [Details(f"rel_delta, sparsity_atol and sparsity_exact per layer ({len(layers)} layers)", [tab])] \
        if len(rows) > 3 * LONG else [tab]
    return out


def _matrix(result, fn, caption: str, runs: list[str] | None = None) -> Table:
    runs = result.runs if runs is None else runs
    ps = result.pairs_summary
    rows = []
    for a in runs:
        row = [a]
        for b in runs:
            if a == b:
                row.append("-")
                continue
            p = ps[(ps["run_a"] == a) & (ps["run_b"] == b)]
            flip = False
            if p.empty:
                p, flip = ps[(ps["run_a"] == b) & (ps["run_b"] == a)], True
            row.append(fn(p.iloc[0], flip) if len(p) else "n/a")
        rows.append(row)
    return Table([""] + runs, rows, caption=caption)


def pair_blocks(result, gate_results) -> list:
    ps = result.pairs_summary
    if ps is None or ps.empty:
        return []
    same = runs_unchanged(result)
    runs = [r for r in result.runs if r not in same]
    if len(runs) < 2:
        return []
    ps = ps[~ps["run_a"].isin(same) & ~ps["run_b"].isin(same)]
    atol = result.info.options.atol

    out = [Heading("Across runs"),
           Para("Cosines are between the updates D = W1 - W0 (whole model: flattened over every tensor, the "
                "task-vector convention), never between the weights themselves. Masks are the changed elements; "
                "the value in parentheses is the baseline for independent masks of the same densities. The table "
                "gives every figure of every pair (Jaccard, one-sided overlaps, sign agreement and the delta cosine "
                "per component)."),
           ]
    if len(runs) <= MATRIX_RUNS:
        out.append(_matrix(result, lambda p, f: _v(p["delta_cos"]), "`delta_cos` (whole model; random baseline 0)",
                           runs))
    else:  # a matrix wider than a page: the figure draws it, the table below has every value
        out.append(Para(f"The `delta_cos` matrix of the {len(runs)} runs is the figure "
                        f"`run_similarity_delta_cos`; every value is in the table below."))
    if same:
        out.insert(2, Para(f"Not compared: {', '.join(same)} (unchanged: bit-identical to the base, so there is no "
                           f"update to compare)."))
    pc = result.pairs_components
    comps = list(dict.fromkeys(pc["component"].astype(str))) if pc is not None and not pc.empty else []
    pair_marks = _gate_marks(gate_results, pair=True)
    header = ["pair", "delta_cos"] + [f"jaccard_{c} (random)" for c in schema.CONVS] + \
        [f"overlap_a_{CONV} (random)", f"overlap_b_{CONV} (random)", "sign_agree", "both changed (exact)"] + \
        [f"delta_cos {c}" for c in comps]
    rows, flags = [], []
    for _, p in ps.iterrows():
        key = f"{p['run_a']}/{p['run_b']}"
        per = []
        for c in comps:
            v = pc[(pc["run_a"] == p["run_a"]) & (pc["run_b"] == p["run_b"]) & (pc["component"].astype(str) == c)]
            per.append(_v(float(v["delta_cos"].iloc[0])) if len(v) else "-")
        rows.append([f"{p['run_a']} vs {p['run_b']}", _v(p["delta_cos"])]
                    + [f"{_v(p[f'jaccard_{c}'])} ({_v(p[f'jaccard_random_{c}'])})" for c in schema.CONVS]
                    + [f"{_v(p[f'overlap_{s}_{CONV}'], 'pct')} ({_v(p[f'overlap_{s}_random_{CONV}'], 'pct')})"
                       for s in ("a", "b")]
                    + [_v(p["sign_agree"], "pct"), fmt(p["n_both_exact"], "int")] + per
                    + ([pair_marks.get(key, "-")] if pair_marks else []))
        flags.append("fail" if "FAIL" in pair_marks.get(key, "") else None)
    if pair_marks:
        header.append("gates")
    t = Table(header, rows, ["l"] + ["r"] * (len(header) - 1 - bool(pair_marks)) + (["l"] if pair_marks else []),
              flags, caption=f"Every pair, all three conventions (`overlap_a_{CONV}`: share of run a's changed elements "
                             f"also changed in run b, |D| > {atol:g}; `sign_agree`: same sign among elements changed "
                             f"in both, exact, random baseline 50%)")
    out += _maybe_details(f"all pairs ({len(rows)})", t)
    return out


def figure_blocks(figures, missing) -> list:
    out = [Heading("Figures")]
    for f in figures:
        out.append(Image(f"figures/{f.stem}.png", f.caption, f.caption, f.png))
    if missing:
        out.append(Para("Not drawn:"))
        out.append(Bullets([f"{m.stem}: {m.reason}" for m in missing]))
    if not figures and not missing:
        out.append(Para("No figures."))
    return out


def provenance_blocks(result) -> list:
    m = result.info
    rows = []
    idents = [("base", m.base)] + [(r, m.run(r)) for r in result.runs]
    for label, ident in idents:
        dtypes = ", ".join(f"{k} x{v}" for k, v in ident.dtypes.items())
        rows.append([label, f"`{_q(ident.path)}`", _q(ident.format), fmt(ident.n_params, "int"), dtypes,
                     _q(ident.fingerprint)])
    ck = Table(["checkpoint", "path", "format", "parameters", "dtypes (tensors)", "fingerprint"], rows,
               ["l", "l", "l", "r", "l", "l"])
    ot = Para(" · ".join(f"`{k}={v}`" for k, v in m.options.values.items()))
    info = (f"updelta {_q(m.updelta_version)}, device {_q(m.device)}, kernel {_q(m.kernel)}, "
            f"family {_q(m.pairing.family)}, {_q(m.seconds)} s")
    return [Heading("Provenance"), Para(info), ck, Details("every option used", [ot])]


def build(result, evals: dict, gate_results, findings, figures, missing, claims=()) -> Document:
    doc = Document("updelta report")
    doc.add(*header_blocks(result))
    doc.add(Contents())
    doc.add(*summary_blocks(result, evals, gate_results))
    doc.add(*gate_blocks(gate_results))
    doc.add(*claims_blocks(list(claims) or [f for f in findings if f.topic == "claim"]))
    doc.add(*finding_blocks(findings, result, evals))
    doc.add(*eval_blocks(result, evals))
    doc.add(*spectral_blocks(result, findings))
    doc.add(*component_blocks(result))
    doc.add(*layer_blocks(result))
    doc.add(*fold_long(where_blocks(result)))  # docs/metrics.md, Where an update sits
    doc.add(*fold_long(lens_blocks(result)))  # docs/metrics.md, Logit lens of the update
    doc.add(*pair_blocks(result, gate_results))
    doc.add(*figure_blocks(figures, missing))
    doc.add(*provenance_blocks(result))
    return doc
