"""The report's "Where the update sits" section: the heads, neurons and token rows carrying most of each run's
update, and how concentrated each run's 2-D updates are (docs/metrics.md, Where an update sits)."""
from __future__ import annotations

import pandas as pd

from updelta.families.naming import GENERIC, family, is_transposed
from updelta.report.document import Heading, Para, Table
from updelta.report.text import fmt

TOP = 5


def _layer(v) -> str:
    return "-" if pd.isna(v) else str(int(v))


def where_blocks(result) -> list:
    t = result.tensors
    heads, neurons = getattr(result, "heads", None), getattr(result, "neurons", None)
    has_conc = "row_top1_share" in t.columns and t["row_top1_share"].notna().any()
    if not has_conc and (heads is None or heads.empty):
        return []
    out = [Heading("Where the update sits"),
           Para("Concentration of each run's 2-D updates (medians over its tensors): the share of a tensor's update "
                "energy ||D||_F^2 in the top 1% and 10% of its rows ([out, in] orientation), and the fewest rows "
                "(as a share of the tensor's rows) holding 90% of it. A uniform update gives 1% and 10%.")]
    fam = family((result.meta.get("pairing") or {}).get("family") or GENERIC)
    rows = []
    for run in result.runs:
        g = t[(t["run"] == run) & t["row_top1_share"].notna()] if has_conc else t.iloc[0:0]
        if g.empty:
            continue
        n_rows = [s[1] if is_transposed(nm, fam) else s[0] for s, nm in zip(g["shape"], g["name"])]
        frac = (pd.to_numeric(g["rows_for_90"]) / pd.Series(n_rows, index=g.index)).median()
        rows.append([run, str(len(g)), fmt(g["row_top1_share"].median(), "pct"),
                     fmt(g["row_top10_share"].median(), "pct"), fmt(frac, "pct"),
                     fmt(g["col_top1_share"].median(), "pct"), fmt(g["row_gini"].median())])
        out.append(Para(f"{run}: 90% of the update energy of the median 2-D tensor lies in {fmt(frac, 'pct')} of "
                        f"its rows; its top 1% of rows hold {fmt(g['row_top1_share'].median(), 'pct')}."))
    if rows:
        out.append(Table(["run", "2-D tensors", "top 1% rows", "top 10% rows", "rows for 90%", "top 1% cols",
                          "row Gini"], rows))
    if heads is not None and not heads.empty:
        hrows = []
        for run in result.runs:
            h = heads[(heads["run"] == run) & (heads["ss_delta"] > 0)]
            tot = h["ss_delta"].sum()
            if not tot > 0:
                continue
            for _, r in h.sort_values("ss_delta", ascending=False, kind="stable").head(TOP).iterrows():
                hrows.append([run, _layer(r["layer"]), str(r["module"]), str(r["part"]), str(int(r["head"])),
                              fmt(r["ss_delta"] / tot, "pct"), fmt(r["energy_share"], "pct"), fmt(r["rel_delta"])])
        if hrows:
            out += [Para(f"The {TOP} attention heads with most of each run's attention update energy (share of the "
                         f"run's summed head energies; share of the head's own module)."),
                    Table(["run", "layer", "module", "part", "head", "share of run", "share of module",
                           "rel_delta"], hrows)]
    if neurons is not None and not neurons.empty:
        for kind, what in (("neuron", "MLP neurons"), ("token", "token rows (embeddings, untied head)")):
            n = neurons[neurons["kind"] == kind]
            nrows = []
            for run in result.runs:
                for _, r in n[n["run"] == run].sort_values("energy", ascending=False, kind="stable").head(TOP).iterrows():
                    label = str(int(r["index"])) + (f" {r['token']!r}" if kind == "token" and r["token"] else "")
                    nrows.append([run, _layer(r["layer"]), str(r["module"]), f"{r['axis']} {label}",
                                  fmt(r["energy_share"], "pct")])
            if nrows:
                out += [Para(f"The {TOP} {what} that moved most per run (largest ||D[i, :]||^2 or ||D[:, j]||^2; "
                             f"share of their tensor's update energy)."),
                        Table(["run", "layer", "module", "row/col", "share of tensor"], nrows)]
    return out
