"""Readable plain-text summaries of a `Result` for the terminal (stdout)."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from updelta.metrics import schema
from updelta.report.gguf_notes import gguf_lines
from updelta.tables.aggregate import (
    SPARSITY_NA,
    sparsity_cell,
    sparsity_left_out,
    towers_included,
    unchanged,
    unchanged_runs,
)
from updelta.tables.meta import PairingNotes, RunInfo
from updelta.tables.result import Result

SPARSITY_NOTE = ("sparsity = share of elements unchanged; exact: W1 == W0; atol: |D| <= {atol} "
                 "(Mukherjee et al.); rtol: |D| <= {eta} * max(|W0|,|W1|) (Zhu et al.)")


def fmt(v, kind: str = "g") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return "-"
    if kind == "pct":
        return f"{100 * v:.2f}%"
    if kind == "int":
        return f"{int(v):,}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def table(rows: list[list[str]], header: list[str]) -> str:
    """A left/right aligned text table (numbers right-aligned)."""
    cols = list(zip(*([header] + rows))) if rows else [[h] for h in header]
    widths = [max(len(str(x)) for x in c) for c in cols]
    def line(r, hdr=False):
        out = []
        for i, x in enumerate(r):
            x = str(x)
            num = not hdr and (x[:1].isdigit() or x[:1] in "-+." and x[1:2].isdigit() or x in ("-", "n/a"))
            out.append(x.rjust(widths[i]) if num and i > 0 else x.ljust(widths[i]))
        return "  ".join(out).rstrip()
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header, True), sep] + [line(r) for r in rows])


def _cols(names) -> list[tuple[str, str, str]]:
    """(column, header, format) from the schema."""
    return [(c, schema.header_of(c), schema.fmt_of(c)) for c in names]


SUMMARY_COLS = _cols(schema.HEADLINE)
SPECTRAL_COLS = _cols(("stable_rank", "energy_rank_90", "erank"))


def _rows(df: pd.DataFrame, keys: list[str], cols) -> tuple[list[list[str]], list[str]]:
    cols = [c for c in cols if c[0] in df.columns]
    header = keys + ["tensors", "numel"] + [c[1] for c in cols]
    rows = [[fmt(r[k]) for k in keys] + [fmt(r["n_tensors"], "int"), fmt(r["numel"], "int")]
            + [_cell(r, c) for c in cols] for _, r in df.iterrows()]
    return rows, header


def _cell(r, c) -> str:
    """One figure; a sparsity figure says what it leaves out (tensors without counts: `sparsity_cell`)."""
    text = fmt(r[c[0]], c[2])
    return sparsity_cell(text, r) if c[0].startswith("sparsity_") else text


def sparsity_notes(df: pd.DataFrame) -> list[str]:
    """The line under a table whose sparsity figures leave tensors out (adapter factors without counts)."""
    if "n_sparsity_null" not in df.columns or not (df["n_sparsity_null"].fillna(0) > 0).any():
        return []
    left = [sparsity_left_out(r) for _, r in df.iterrows()]
    parts = [SPARSITY_NA] if any(every for _, every in left) else []
    if any(n and not every for n, every in left):
        parts.append("'(k tensors n/a)': k tensors without sparsity counts (adapter factors) left out of the figure")
    return ["; ".join(parts)]


def summary_text(res: Result, top: int = 10) -> str:
    m = res.info
    opts = m.options
    runs = res.runs
    out = [f"updelta {m.updelta_version or ''}: base {m.base.path}"]
    for r in runs:
        rid = m.run(r)
        out.append(f"  {r}: {rid.path} ({', '.join([str(rid.format)] + list(rid.dtypes))})")
    out.append(f"family {m.pairing.family}, device {m.device}, "
               f"{len(res.tensors['name'].unique()) if len(res.tensors) else 0} tensors, {m.seconds} s")
    out.append(SPARSITY_NOTE.format(atol=opts.get("atol"), eta=opts.get("eta")))
    spec_cols = SPECTRAL_COLS if "stable_rank" in res.summary.columns else []
    same = unchanged_runs(res.tensors, towers_included(res.meta))
    out.append("\nWhole model" + (" (spectral figures: medians over 2-D tensors, changed ones only)" if spec_cols else ""))
    summ = res.summary.assign(run=[f"{r} (unchanged)" if r in same else r for r in res.summary["run"].astype(str)])
    rows, header = _rows(summ, ["run"], SUMMARY_COLS + spec_cols)
    out.append(table(rows, header))
    out += sparsity_notes(res.summary)
    if same:
        out.append(f"unchanged: {', '.join(same)}: every tensor bit-identical to the base (W1 == W0 for every "
                   f"compared element)")
    out.append("\nPer component")
    rows, header = _rows(res.components, ["run", *(["tower"] if "tower" in res.components else []), "component"],
                         SUMMARY_COLS + spec_cols)
    out.append(table(rows, header))
    if not sparsity_notes(res.summary):
        out += sparsity_notes(res.components)
    if spec_cols and "energy_rank_90" in res.tensors:
        k = opts.topk
        out.append(f"(r90 = energy rank at 90%; '-' where not reached within the top {k}, i.e. > {k})")
    t = res.tensors
    changed = [r for r in runs if r not in same]
    if len(t) and changed:
        out.append(f"\nTop {top} tensors by rel_delta" + (f" (not for {', '.join(same)}: unchanged)" if same else ""))
        for r in changed:
            sub = t[(t["run"] == r) & ~unchanged(t)]  # changed tensors only: no list of zeros
            sub = sub.sort_values("rel_delta", ascending=False, na_position="last").head(top)
            rows = [[r, x["name"], schema.shape_text(x["shape"]), fmt(x["rel_delta"]), fmt(x["delta_max"]),
                     _tensor_sparsity(x)] for _, x in sub.iterrows()]
            out.append(table(rows, ["run", "tensor", "shape", "rel_delta", "delta_max", "sparse exact"]))
    if len(res.pairs_summary):
        out.append("\nAcross runs (whole model; random = independent masks of the same densities)")
        rows = [[p["run_a"], p["run_b"], fmt(p["delta_cos"]), fmt(p["jaccard_exact"]),
                 fmt(p["jaccard_random_exact"]), fmt(p["overlap_a_exact"]), fmt(p["sign_agree"])]
                for _, p in res.pairs_summary.iterrows()]
        out.append(table(rows, ["run_a", "run_b", "delta_cos", "jaccard exact", "random", "overlap_a", "sign_agree"]))
    out += _notes(m.pairing, res)
    return "\n".join(out)


def _tensor_sparsity(x) -> str:
    """A tensor's exact sparsity; n/a for a tensor without counts (an adapter's factors, docs/adapters.md)."""
    if "n_eq" in x and pd.isna(x["n_eq"]):
        return "n/a"
    return fmt(x["sparsity_exact"], "pct")


def _notes(p: PairingNotes, res: Result) -> list[str]:
    lines = []
    for t in p.tied:
        side = {"base": "absent from the base", "finetuned": f"absent from {t.run}",
                "both": "absent from every checkpoint"}[t.side]
        lines.append(f"tied: {t.name} {side}; read as {t.to}")
    for d in p.resized:
        lines.append(f"resized: {d.name} ({d.run}) {list(d.base_shape)} -> {list(d.ft_shape)}, compared on the "
                     f"base's rows")
    for d in p.skipped_shape:
        lines.append(f"skipped (shape mismatch): {d.name} ({d.run}) {list(d.base_shape)} vs {list(d.ft_shape)}")
    for r, names in p.only_in_base.items():
        if names:
            lines.append(f"only in base (not in {r}): {', '.join(names[:20])}" + (" ..." if len(names) > 20 else ""))
    for r, names in p.only_in_run.items():
        if names:
            lines.append(f"only in {r}: {', '.join(names[:20])}" + (" ..." if len(names) > 20 else ""))
    if p.non_float:
        lines.append(f"not compared (not floating point): {', '.join(p.non_float[:20])}")
    if p.filtered_out:
        lines.append(f"left out by --include/--exclude: {p.filtered_out} tensors")
    for who, q in (p.extra.get("dequantized") or {}).items():
        blocks = ", ".join(f"{n} {b}" for b, n in (q.get("blocks") or {}).items())
        stored = ", ".join(sorted(q.get("stored_dtypes") or {}))
        lines.append(f"de-quantized ({who}): {q.get('dequantized')} {stored} weights x their scales ({blocks}; "
                     f"{q.get('method')}), measured as float32 values; scale tensors not compared")
    lines += gguf_lines(p.extra, res.tensors)  # GGUF names, transforms and error by quant type (gguf_notes)
    where = p.extra.get("structure")
    if where and not where.startswith("family JSON"):
        lines.append(f"map of the model (component, module, layer, expert, heads): {where}")
    if p.extra.get("family_note"):
        lines.append(f"map: {p.extra['family_note']}")
    if "component" in res.tensors.columns:
        n_other = res.tensors.loc[res.tensors["component"] == "other", "name"].nunique()
        if n_other:
            lines.append(f"component other: {n_other} tensors have no place in the model's map (docs/families.md)")
    lines += base_lines(res.info)  # per-run bases, pairs not compared
    if "n_spectral_skipped" in res.summary.columns:
        n = int(res.summary["n_spectral_skipped"].fillna(0).max())
        if n:
            lines.append(f"spectral: {n} 1-D tensors per run have no spectral figures")
    return (["\nNotes"] + ["  " + x for x in lines]) if lines else []


def trajectory_text(t) -> str:
    """The whole-model rows as a text table for the terminal."""
    m = t.model()
    rows = [[str(int(r["step"])), Path(str(r["checkpoint"])).name, fmt(r["rel_delta"]), fmt(r["sparsity_atol"], "pct"),
             fmt(r["sparsity_exact"], "pct"), fmt(r["update_rel"]), fmt(r["cos_prev_update"]), fmt(r["cos_delta_prev"])]
            for _, r in m.iterrows()]
    info = RunInfo.from_dict(t.meta)
    opts = info.options
    head = (f"updelta trajectory: base {info.base.path}, {len(m)} checkpoints\n"
            f"rel_delta = ||W_k - W0|| / ||W0||; sparse = share unchanged vs base (atol |D| <= {opts.get('atol')}; "
            f"exact W == W0); update_rel = ||W_k - W_(k-1)|| / ||W0||; cos_prev_update = cosine between consecutive "
            f"updates; cos_delta_prev = cos(D_(k-1), D_k)\n")
    return head + table(rows, ["step", "checkpoint", "rel_delta", "sparse atol", "sparse exact", "update_rel",
                               "cos_prev_update", "cos_delta_prev"])


def base_lines(info) -> list[str]:
    """Plain-text notes of a result's per-run bases and skipped pairs (`updelta.tables.meta.RunInfo` in)."""
    lines = [f"{r}: measured from its own base {info.base_of(r).path} (not the common base)"
             for r in info.run_order if info.has_own_base(r)]
    lines += [f"{p.run_a} vs {p.run_b}: cross-run metrics not computed: {p.why}" for p in info.pairs_skipped]
    return lines
