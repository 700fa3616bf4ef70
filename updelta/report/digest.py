"""The report's first sections after the summary: the claims with their verdicts, and the findings as tables.

A reader with five minutes wants the summary, then the claims (one row per claim: verdict, numbers, source), then
one compact table per topic (one row per run, the published reference stated once above it). Bullets remain only
for what a table cannot say: statements about all runs or pairs, storage, forgetting, what was not compared.

Per-run findings whose numbers are already in a table of the report are not repeated as bullets (they stay in
summary.json and tables/findings.parquet): the spectral figures are the Spectral table (the references of rank,
spectrum shift, off-principal alignment and intruders are stated above it), the measured accuracies the
Evaluations table. Definitions: docs/metrics.md; published figures: docs/metrics.md, Reference ranges.
"""
from __future__ import annotations

import dataclasses
import math

import pandas as pd

from updelta.report.document import Bullets, Heading, Para, Table
from updelta.report.findings import storage
from updelta.tables.aggregate import aggregate_tensors, sparsity_cell

CLAIM_ORDER = ("claim", "verdict", "threshold", "numbers", "text", "source")  # known fields first, others after
CLAIM_DATA = ("measured", "settings")  # the numbers and settings as data: in summary.json; `text` shows them
SPECTRAL_TOPICS = ("rank", "nss", "offprincipal", "intruders")
TABLE_TOPICS = ("sparsity", "norm", "concentration")
SPECTRAL_COLUMNS = {"rank": "rank_frac", "nss": "nss", "offprincipal": "offprincipal_overlap", "intruders": "intruders"}
SHOWN_ELSEWHERE = SPECTRAL_TOPICS + ("evaluation",)  # per-run findings shown by the Spectral / Evaluations tables
TITLES = {"sparsity": "Share of elements unchanged", "norm": "Update size", "concentration": "Where the update sits",
          "rank": "Rank", "nss": "Spectrum shift", "offprincipal": "Off-principal alignment",
          "intruders": "Intruder dimensions"}


# ---- claims --------------------------------------------------------------------------------------------------
def _plain(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return "; ".join(f"{k} {_plain(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(_plain(x) for x in v)
    return str(v)


def claim_row(c) -> dict[str, str]:
    """One claim record as {field: text}, whatever fields its dataclass has (`updelta.demo.claims.Claim`: claim, source,
    verdict, text; records with threshold and numbers render the same way), known fields first. A claim given as a
    `Finding` of topic "claim" (subject = claim, text = "verdict: numbers", reference = source) is read back too."""
    if dataclasses.is_dataclass(c) and getattr(c, "topic", None) == "claim":
        verdict, _, rest = str(c.text).partition(": ")
        d = {"claim": c.subject, "verdict": verdict, "numbers": rest, "source": c.reference}
    elif dataclasses.is_dataclass(c):
        d = {f.name: getattr(c, f.name) for f in dataclasses.fields(c)}
    else:
        d = dict(c)
    if d.get("threshold") and isinstance(d.get("text"), str):  # the threshold has its own column
        d["text"] = d["text"].split("; threshold: ")[0]
    keys = [k for k in CLAIM_ORDER if k in d] + [k for k in d if k not in CLAIM_ORDER]
    return {k: _plain(d[k]) for k in keys if k not in CLAIM_DATA}


def claims_blocks(claims) -> list:
    """The claims table: one row per claim, its verdict in bold; columns from the claim records' fields."""
    rows = [claim_row(c) for c in claims]
    if not rows:
        return []
    header = list(dict.fromkeys(k for r in rows for k in r))
    body = [[(f"**{r[k]}**" if k == "verdict" and r.get(k, "-") != "-" else r.get(k, "-")) for k in header]
            for r in rows]
    counts = {}
    for r in rows:
        counts[r.get("verdict", "-")] = counts.get(r.get("verdict", "-"), 0) + 1
    tally = ", ".join(f"{n} {v}" for v, n in counts.items())
    return [Heading("Claims from the literature"),
            Para(f"Each published claim that these runs can test, with its verdict ({tally}) and the numbers behind "
                 f"it (the verdict rule: `updelta.demo.claims`, docs/methods.md)."),
            Table([h.capitalize() if h != "text" else "Numbers" for h in header], body, ["l"] * len(header))]


# ---- per-topic tables ----------------------------------------------------------------------------------------
def _num(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"


def _pct(v, digits: int = 1) -> str:
    return "-" if v is None or pd.isna(v) else f"{100 * v:.{digits}f}%"


def sparsity_table(result, evals: dict) -> Table:
    rows = []
    for _, r in result.summary.iterrows():
        e = evals.get(r["run"])
        wd = e.weight_decay if e is not None else None
        rows.append([r["run"]] + [sparsity_cell(_pct(r[f"sparsity_{c}"], 2), r) for c in ("exact", "atol", "rtol")]
                    + [storage(result, r["run"]).removesuffix(" storage"), "-" if wd is None else f"{wd:g}"])
    return Table(["run", "sparsity_exact", "sparsity_atol", "sparsity_rtol", "storage", "weight decay"], rows,
                 ["l", "r", "r", "r", "l", "r"])


def size_table(result) -> Table | None:
    """Update size and where it sits, per run: what the summary does not already give (its rel_delta, delta_fro,
    delta_max and cos_delta_base are not repeated): ||D||_F against the smallest update, the tensor with the
    largest rel_delta, the components with most of ||D||^2, and the range of rel_delta over the layers."""
    s, t, comp = result.summary, result.tensors, result.components
    moved = s[s["delta_fro"] > 0]
    low = float(moved["delta_fro"].min()) if len(moved) else math.nan
    rows = []
    for _, r in s.iterrows():
        run = r["run"]
        if not r["delta_fro"] > 0:
            continue
        sub = t[t["run"] == run].dropna(subset=["rel_delta"])
        top = sub.sort_values("rel_delta", ascending=False).head(1)
        big = f"`{top.iloc[0]['name']}` ({_num(top.iloc[0]['rel_delta'])})" if len(top) else "-"
        ratio = f"{r['delta_fro'] / low:.3g}x" if low > 0 else "-"
        c = comp[comp["run"] == run]
        tot, n = float((c["delta_fro"] ** 2).sum()), float(c["numel"].sum())
        parts = "-"
        if tot > 0 and n > 0:
            c = c.assign(share=c["delta_fro"] ** 2 / tot, elems=c["numel"] / n).sort_values("share", ascending=False)
            parts = ", ".join(f"{x['component']} {_pct(x['share'], 0)} ({_pct(x['elems'], 0)})"
                              for _, x in c.head(3).iterrows())
        span = "-"
        lay_rows = t[(t["run"] == run) & t["layer"].notna()]
        if lay_rows["layer"].nunique() >= 2:
            lay = aggregate_tensors(lay_rows, ["layer"]).dropna(subset=["rel_delta"])
            if len(lay) >= 2:
                hi, lo = lay.loc[lay["rel_delta"].idxmax()], lay.loc[lay["rel_delta"].idxmin()]
                span = (f"{_num(lo['rel_delta'])} (layer {int(lo['layer'])}) to {_num(hi['rel_delta'])} "
                        f"(layer {int(hi['layer'])})")
        rows.append([run, ratio, big, parts, span])
    if not rows:
        return None
    return Table(["run", "delta_fro / smallest", "largest rel_delta of a tensor",
                  "largest components: share of ss_delta (of elements)", "rel_delta over layers"], rows,
                 ["l", "r", "l", "l", "l"])


def _ref_line(items, topic: str) -> str | None:
    refs = list(dict.fromkeys(f.reference for f in items if f.topic == topic and f.subject and f.reference))
    if not refs:
        return None
    base = refs[0].split("; not directly comparable here")[0]
    notes = sorted({r.split("; not directly comparable here ", 1)[1] for r in refs if "not directly comparable" in r})
    line = f"Published: {base}."
    if notes:
        line += f" **Not directly comparable here** {', '.join(notes)}."
    return line


def topic_blocks(result, evals: dict, items) -> list:
    """The per-run findings of the tabled topics as tables, each topic's shared reference once above its table:
    share of elements unchanged; update size and where it sits (one table: their columns complement the
    summary's)."""
    out = []
    with_runs = {f.topic for f in items if f.subject in set(result.runs)}
    if "sparsity" in with_runs:
        ref = _ref_line(items, "sparsity")
        out += [Para(f"**{TITLES['sparsity']}**" + (f". {ref}" if ref else "")), sparsity_table(result, evals)]
    if with_runs & {"norm", "concentration"}:
        t = size_table(result)
        if t is not None:
            refs = [r for r in (_ref_line(items, "norm"), _ref_line(items, "concentration")) if r]
            out += [Para("**Update size and where it sits** (beside the summary's `rel_delta`, `delta_fro`, "
                         "`delta_max`, `cos_delta_base`)" + (f". {' '.join(refs)}" if refs else "")), t]
    return out


def spectral_references(items) -> list:
    """The published references of the spectral topics, one bullet each (the Spectral table has the numbers)."""
    lines = []
    for topic in SPECTRAL_TOPICS:
        ref = next((f.reference for f in items if f.topic == topic and f.reference), None)
        if ref:
            lines.append(f"**{TITLES[topic]}** (`{SPECTRAL_COLUMNS[topic]}`): published: {ref}.")
    return [Bullets(lines)] if lines else []


def is_tabled(f, runs) -> bool:
    """Whether a finding is said by a table of the report (not repeated as a bullet)."""
    if f.topic == "claim":
        return True
    return f.subject in runs and (f.topic in TABLE_TOPICS or f.topic in SHOWN_ELSEWHERE)
