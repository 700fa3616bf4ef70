"""Findings: plain statements computed from the numbers, each with the published range where one exists.

Every function here is pure: tables (a `Result`) and evaluations in, `Finding`s out. A finding
states a measured figure, the convention it was measured under (sparsity convention, storage
dtype, weight decay when the evaluation file gives it) and, beside it, the reference range from
docs/metrics.md. No finding infers one quantity from another: retention is shown
when it was measured, never derived from geometry (RL's Razor, Shenfeld et al. 2025).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import pandas as pd

from updelta.options import DiffOptions
from updelta.tables.aggregate import aggregate_tensors, sparsity_left_out
from updelta.tables.evals import SPLIT_LABELS

# Published ranges (metrics.md); quoted beside the figures they can be compared with.
PUBLISHED_ATOL = 1e-5  # Mukherjee et al. 2025's tolerance on bf16 (a published setting, not updelta's default)
REF_SPARSITY = ("Mukherjee et al. 2025 report 68.5-96% of elements unchanged for RL runs and 6-15% for SFT "
                "(bf16, |D| <= 1e-5, RL measured from the SFT checkpoint it started from)")
REF_DELTA_COS = ("unrelated task vectors are near-orthogonal (|cos| ~0.01-0.06 for CLIP tasks, Ilharco et al. 2022); "
                 "separate RL runs have been reported near 90 degrees")
REF_OVERLAP = ("Mukherjee et al. 2025: one-sided overlap 60.5% across seeds vs 36.7% random; Zhu et al. 2025: "
               "Jaccard 0.55-0.60 vs 0.37-0.47 random")
REF_ES_NORM = ("Abdi et al. 2026 report ES updates with ~3 orders of magnitude larger L2 norm than GRPO's, and far "
               "less sparse")
REF_BF16 = ("Zhu et al. 2025: a bf16 value only changes when the update exceeds about half a ULP (a relative change "
            "of ~0.2-0.39%), so smaller updates vanish at storage time (precision-induced sparsity)")
REF_RANK = ("Mukherjee et al. 2025 find RL updates nearly full rank (rank / min(m, n) 99.2-99.8%) despite being "
            "sparse")
REF_NSS = "Zhu et al. 2025 report NSS ~1e-5..6e-5 per layer for RLVR and ~1e-1 for SFT"
REF_OFFPRINCIPAL = ("Zhu et al. 2025: RL updates land off the principal weights more than chance (overlap below "
                    "alpha)")
REF_INTRUDERS = ("Shuttleworth et al. 2024: LoRA creates intruder dimensions, full fine-tuning mostly does not "
                 "(top 10 singular vectors of W1, eps 0.5)")
REF_RAZOR = ("RL's Razor (Shenfeld et al. 2025) found forgetting predicted by the forward KL between base and "
             "fine-tuned policies on the new task, not by weight-change norms, sparsity or rank")

DTYPE_SHORT = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float64": "fp64"}
KNOWN_METHODS = ("sft", "dft", "grpo", "es")


@dataclass(frozen=True)
class Finding:
    """One statement: what it is about (a run, a pair 'a vs b', or None), the text, and a reference."""

    topic: str  # sparsity, norm, concentration, pair, evaluation, storage, pairing, forgetting
    subject: str | None
    text: str
    reference: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def pct(v: float, digits: int = 1) -> str:
    return "NaN" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.{digits}f}%"


def num(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "undefined"
    return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"


def storage(result, run: str) -> str:
    """'bf16 storage' or 'base bf16, run fp32' from the per-tensor dtypes."""
    t = result.tensors[result.tensors["run"] == run]
    if t.empty:
        return "storage unknown"
    def name(col):
        vals = sorted(set(t[col].astype(str)))
        return "/".join(DTYPE_SHORT.get(v, v) for v in vals)
    b, f = name("dtype_base"), name("dtype_ft")
    return f"{b} storage" if b == f else f"base {b}, run {f} storage"


def _is_bf16(result, run: str) -> bool:
    t = result.tensors[result.tensors["run"] == run]
    return len(t) > 0 and set(t["dtype_base"]) == {"bfloat16"} and set(t["dtype_ft"]) == {"bfloat16"}


def method_of(run: str, evals: dict) -> str | None:
    """The training method: the evaluation file's `method`, else the run name when it is exactly a known method."""
    e = evals.get(run)
    if e is not None and e.method:
        return str(e.method).lower()
    return run.lower() if run.lower() in KNOWN_METHODS else None


def _opts(result):
    """The result's options (`updelta.tables.meta.Options`: `.atol`, `.eta`, `.get(name, default)`)."""
    return result.info.options


def sparsity_findings(result, evals: dict) -> list[Finding]:
    o = _opts(result)
    atol, eta = o.atol, o.eta
    out = []
    for _, r in result.summary.iterrows():
        run = r["run"]
        ctx = [f"|D| <= {atol:g}", storage(result, run)]
        e = evals.get(run)
        if e is not None and e.weight_decay is not None:
            ctx.append(f"weight decay {e.weight_decay:g}")
        left, every = sparsity_left_out(r)
        if every:  # only unchanged tensors have counts: the 100% says nothing about the update
            text = (f"n/a: every changed tensor ({left}) has no sparsity counts (adapter factors; docs/adapters.md, "
                    f"--merge-dtype); the tensors that have counts are unchanged")
        elif r["sparsity_exact"] == 1.0:
            text = (f"every one of {int(r['n_compared']):,} elements is bit-identical to the base "
                    f"(100% unchanged under all three conventions)")
        else:
            text = (f"{pct(r['sparsity_atol'])} of elements unchanged under atol ({'; '.join(ctx)}); "
                    f"exact (W1 == W0): {pct(r['sparsity_exact'])}; rtol (eta {eta:g}): {pct(r['sparsity_rtol'])}")
            if left:
                text += f"; {left} tensor(s) without sparsity counts (adapter factors) left out"
        ref = REF_SPARSITY
        if atol != PUBLISHED_ATOL or not _is_bf16(result, run):
            ref += f"; not directly comparable here ({storage(result, run)}, atol {atol:g})"
        out.append(Finding("sparsity", run, text, ref))
    return out


def norm_findings(result, evals: dict) -> list[Finding]:
    out = []
    s = result.summary
    t = result.tensors
    for _, r in s.iterrows():
        run = r["run"]
        if r["delta_fro"] == 0:
            continue
        sub = t[t["run"] == run].dropna(subset=["rel_delta"])
        top = sub.sort_values("rel_delta", ascending=False).head(1)
        text = (f"||D||_F / ||W0||_F = {num(r['rel_delta'])} over the whole model (||D||_F = {num(r['delta_fro'])}, "
                f"sums of squares over {int(r['n_tensors'])} tensors); max |D| = {num(r['delta_max'])}; "
                f"cos(D, W0) = {num(r['cos_delta_base'])}")
        if len(top):
            x = top.iloc[0]
            text += f"; largest per tensor: `{x['name']}` ({num(x['rel_delta'])})"
        out.append(Finding("norm", run, text))
    moved = s[s["delta_fro"] > 0]
    if len(moved) >= 2:
        hi = moved.loc[moved["delta_fro"].idxmax()]
        lo = moved.loc[moved["delta_fro"].idxmin()]
        ratio = hi["delta_fro"] / lo["delta_fro"]
        ref = None
        if method_of(hi["run"], evals) == "es" and method_of(lo["run"], evals) == "grpo":
            ref = REF_ES_NORM
        out.append(Finding("norm", None, f"the largest update norm ({hi['run']}, {num(hi['delta_fro'])}) is "
                                         f"{ratio:.3g}x the smallest ({lo['run']}, {num(lo['delta_fro'])})", ref))
    return out


def concentration_findings(result) -> list[Finding]:
    """Where each run's squared update norm sits: by component and by layer."""
    out = []
    comp = result.components
    t = result.tensors
    for run in result.runs:
        c = comp[comp["run"] == run]
        tot = float((c["delta_fro"] ** 2).sum())
        n = float(c["numel"].sum())
        if tot <= 0 or n <= 0 or c.empty:
            continue
        c = c.assign(share=c["delta_fro"] ** 2 / tot, elems=c["numel"] / n).sort_values("share", ascending=False)
        parts = [f"{x['component']} {pct(x['share'], 0)} of ||D||^2 ({pct(x['elems'], 0)} of elements)"
                 for _, x in c.head(3).iterrows()]
        text = "update by component: " + ", ".join(parts)
        sub = t[(t["run"] == run) & t["layer"].notna()]
        if sub["layer"].nunique() >= 2:
            lay = aggregate_tensors(sub, ["layer"]).dropna(subset=["rel_delta"])
            if len(lay) >= 2:
                hi = lay.loc[lay["rel_delta"].idxmax()]
                lo = lay.loc[lay["rel_delta"].idxmin()]
                text += (f"; per-layer ||D||/||W0|| ranges from {num(lo['rel_delta'])} (layer {int(lo['layer'])}) "
                         f"to {num(hi['rel_delta'])} (layer {int(hi['layer'])})")
        out.append(Finding("concentration", run, text))
    return out


MAX_PAIRS = 6  # more pairs than this: one finding for the spread over all pairs (the matrices have each)


def _span(df: pd.DataFrame, col: str, fmt) -> str:
    """'from LO (a vs b) to HI (c vs d), median M' over the pairs where `col` is defined."""
    v = df.dropna(subset=[col])
    if v.empty:
        return "is undefined for every pair"
    lo, hi = v.loc[v[col].idxmin()], v.loc[v[col].idxmax()]
    return (f"ranges from {fmt(lo[col])} ({lo['run_a']} vs {lo['run_b']}) to {fmt(hi[col])} ({hi['run_a']} vs "
            f"{hi['run_b']}), median {fmt(float(v[col].median()))}")


def pair_range_findings(result, conv: str = "atol") -> list[Finding]:
    """With many runs: the spread over all pairs of the delta cosine, mask Jaccard against chance, sign agreement."""
    ps = _measured_pairs(result)
    ps = ps.assign(_excess=ps[f"jaccard_{conv}"] - ps[f"jaccard_random_{conv}"])
    ref = f"{REF_DELTA_COS}; {REF_OVERLAP}"
    subj = f"all {len(ps)} pairs"
    return [Finding("pair", subj, f"delta cosine (whole model) {_span(ps, 'delta_cos', num)}", ref),
            Finding("pair", subj, f"Jaccard of changed-element masks ({conv}) minus its independence baseline "
                                  f"{_span(ps, '_excess', lambda x: f'{x:+.3g}')}", ref),
            Finding("pair", subj, f"sign agreement on elements changed in both (exact) {_span(ps, 'sign_agree', pct)} "
                                  f"(50% if the signs were independent and equally likely)", ref)]


def pair_findings(result, conv: str = "atol") -> list[Finding]:
    """One finding per pair: delta cosine, mask overlap (convention `conv`) against chance, sign agreement."""
    ps = _measured_pairs(result)
    if len(ps) > MAX_PAIRS:
        return pair_range_findings(result, conv)
    out = []
    o = _opts(result)
    label = f"|D| <= {o.get('atol', DiffOptions.atol):g}" if conv == "atol" else conv
    for _, p in ps.iterrows():
        subj = f"{p['run_a']} vs {p['run_b']}"
        if math.isnan(p["delta_cos"]):
            parts = ["delta cosine undefined (one update is zero)"]
        else:
            parts = [f"delta cosine {num(p['delta_cos'])} (whole model, flattened over all tensors)"]
        if not math.isnan(p[f"jaccard_{conv}"]):
            parts.append(f"changed-element masks ({label}) have Jaccard {num(p[f'jaccard_{conv}'])} vs "
                         f"{num(p[f'jaccard_random_{conv}'])} for independent masks of the same densities; "
                         f"{pct(p[f'overlap_a_{conv}'])} of {p['run_a']}'s changed elements are changed in "
                         f"{p['run_b']} (random {pct(p[f'overlap_a_random_{conv}'])}), "
                         f"{pct(p[f'overlap_b_{conv}'])} the other way (random {pct(p[f'overlap_b_random_{conv}'])})")
        if not math.isnan(p["sign_agree"]):
            parts.append(f"{pct(p['sign_agree'])} of the {int(p['n_both_exact']):,} elements changed in both "
                         f"(exact) moved in the same direction (50% if the signs were independent and equally likely)")
        out.append(Finding("pair", subj, "; ".join(parts), f"{REF_DELTA_COS}; {REF_OVERLAP}"))
    return out


def spectral_findings(result) -> list[Finding]:
    """Medians over each run's 2-D updates of the spectral figures that have a published range."""
    s = result.summary
    out = []
    for _, r in s.iterrows():
        run = r["run"]
        n = r.get("n_spectral")
        what = f"median over {int(n)} 2-D updates" if n is not None and not pd.isna(n) else "median over 2-D updates"
        if "rank_frac" in s and not pd.isna(r["rank_frac"]):
            out.append(Finding("rank", run, f"numerical rank / min(m, n) = {pct(r['rank_frac'])} ({what})", REF_RANK))
        if "nss" in s and not pd.isna(r["nss"]):
            out.append(Finding("nss", run, f"normalized spectrum shift ||s(W1) - s(W0)|| / ||s(W0)|| = "
                                          f"{num(r['nss'])} ({what})", REF_NSS))
        if "offprincipal_overlap" in s and not pd.isna(r["offprincipal_overlap"]):
            text = (f"{pct(r['offprincipal_overlap'])} of changed elements fall on the principal weights vs "
                    f"{pct(r.get('offprincipal_chance'))} by chance ({what})")
            out.append(Finding("offprincipal", run, text, REF_OFFPRINCIPAL))
        if "intruders" in s and not pd.isna(r["intruders"]):
            out.append(Finding("intruders", run, f"{int(r['intruders'])} intruder dimension(s) ({what})",
                               REF_INTRUDERS))
    order = {"rank": 0, "nss": 1, "offprincipal": 2, "intruders": 3}
    return sorted(out, key=lambda f: order[f.topic])  # grouped by topic, runs in order within each


def evaluation_findings(result, evals: dict) -> list[Finding]:

    out = []
    for run in result.runs:
        e = evals.get(run)
        if e is None:
            continue
        parts = []
        for k in e.splits:
            g = e.after[k] - e.before[k]
            parts.append(f"{SPLIT_LABELS.get(k, k)} {e.before[k]:.3f} -> {e.after[k]:.3f} ({g:+.3f})")
        head = f"measured accuracy{' (' + e.method + ')' if e.method else ''}: "
        out.append(Finding("evaluation", run, head + "; ".join(parts)))
    return out


def storage_findings(result) -> list[Finding]:
    o = _opts(result)
    bf16 = [r for r in result.runs if _is_bf16(result, r)]
    if not bf16:
        return []
    text = f"base and run stored in bf16 ({', '.join(bf16)})"
    if o.eta <= 2.0 ** -9:
        same = all(abs(float(s["sparsity_exact"]) - float(s["sparsity_rtol"])) < 1e-12
                   for _, s in result.summary[result.summary["run"].isin(bf16)].iterrows())
        text += (f"; rtol with eta {o.eta:g} is the same test as exact on bf16 "
                 f"(the smallest change of a bf16 value is 2^-8 = 0.39% of it)"
                 + (" and the measured figures agree" if same else ""))
    return [Finding("storage", None, text, REF_BF16)]


def pairing_findings(result) -> list[Finding]:
    p = result.info.pairing
    out = []
    for run, names in p.only_in_base.items():
        if names:
            shown = ", ".join(f"`{n}`" for n in names[:5]) + (" ..." if len(names) > 5 else "")
            out.append(Finding("pairing", run, f"{len(names)} tensor(s) of the base are absent from the run and "
                                               f"not compared: {shown}"))
    for run, names in p.only_in_run.items():
        if names:
            shown = ", ".join(f"`{n}`" for n in names[:5]) + (" ..." if len(names) > 5 else "")
            out.append(Finding("pairing", run, f"{len(names)} tensor(s) only in the run, not compared: {shown}"))
    for d in p.resized:
        out.append(Finding("pairing", d.run, f"`{d.name}` resized {list(d.base_shape)} -> {list(d.ft_shape)}; "
                                                f"compared on the base's rows"))
    s = result.summary
    for _, r in s.iterrows():
        nb, nf = int(r.get("nonfinite_base", 0) or 0), int(r.get("nonfinite_ft", 0) or 0)
        if nb or nf:
            out.append(Finding("pairing", r["run"], f"non-finite values left out of every metric: {nb:,} in the "
                                                    f"base, {nf:,} in the run"))
    return out


def base_findings(result) -> list[Finding]:
    """Runs measured from a base of their own, and the pairs whose cross-run metrics were therefore not computed
    (docs/inputs.md, Per-run bases)."""
    info = result.info
    out = [Finding("pairing", r, f"measured from its own base `{info.base_of(r).path}` (fingerprint "
                                 f"{info.base_of(r).fingerprint}), not the common base")
           for r in result.runs if info.has_own_base(r)]
    for p in info.pairs_skipped:
        out.append(Finding("pairing", f"{p.run_a} vs {p.run_b}", f"cross-run metrics not computed: {p.why}; "
                                                                 f"they are null in the tables"))
    return out


def _measured_pairs(result) -> pd.DataFrame:
    """`pairs_summary` without the null rows of pairs that were not computed (runs of different bases)."""
    ps = result.pairs_summary
    skipped = {(p.run_a, p.run_b) for p in result.info.pairs_skipped}
    if not skipped or ps is None or ps.empty:
        return ps
    return ps[[(a, b) not in skipped for a, b in zip(ps["run_a"], ps["run_b"])]].reset_index(drop=True)


def forgetting_note(result, evals: dict) -> Finding:
    have = [r for r in result.runs if r in evals and any(k in evals[r].splits for k in ("retention", "knowledge"))]
    if have:
        text = (f"retention is measured, not inferred: the accuracies beside the geometry ({', '.join(have)}) come "
                f"from evaluations; this report does not claim that any weight figure predicts them")
    else:
        text = ("no retention measurement was given (--eval), so this report says nothing about forgetting; the "
                "weight figures in this report do not measure it")
    return Finding("forgetting", None, text, REF_RAZOR)


def findings(result, evals: dict | None = None) -> list[Finding]:
    """Every finding for a result, in reading order."""
    evals = evals or {}
    out: list[Finding] = []
    out += sparsity_findings(result, evals)
    out += norm_findings(result, evals)
    out += concentration_findings(result)
    out += storage_findings(result)
    out += spectral_findings(result)
    out += pair_findings(result)
    out += evaluation_findings(result, evals)
    out.append(forgetting_note(result, evals))
    out += pairing_findings(result)
    out += base_findings(result)
    return out


def as_frame(items: list[Finding]) -> pd.DataFrame:
    return pd.DataFrame([f.as_dict() for f in items], columns=["topic", "subject", "text", "reference"])
