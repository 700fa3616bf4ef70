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


def _part(r) -> str:
    """The head's part (q, k, v, o) when the module name does not already say it (fused qkv)."""
    part, module = str(r["part"]), str(r["module"])
    return "" if module.startswith(part) or module.split("_")[0].endswith(part) else f"{part} "


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
            top = h.sort_values("ss_delta", ascending=False, kind="stable").head(TOP)
            hrows.append([run, "; ".join(
                f"L{_layer(r['layer'])} {r['module']} {_part(r)}h{int(r['head'])} {fmt(r['ss_delta'] / tot, 'pct')} "
                f"({fmt(r['energy_share'], 'pct')}, {fmt(r['rel_delta'])})" for _, r in top.iterrows())])
        if hrows:
            out += [Para(f"The {TOP} attention heads with most of each run's attention update energy, largest first: "
                         f"layer, module, head, share of the run's summed head energies (share of the head's own "
                         f"module, the head's rel_delta)."),
                    Table(["run", f"top {TOP} heads"], hrows, ["l", "l"])]
    if neurons is not None and not neurons.empty:
        for kind, what in (("neuron", "MLP neurons"), ("token", "token rows (embeddings, untied head)")):
            n = neurons[neurons["kind"] == kind]
            nrows = []
            for run in result.runs:
                top = n[n["run"] == run].sort_values("energy", ascending=False, kind="stable").head(TOP)
                if top.empty:
                    continue
                cells = []
                for _, r in top.iterrows():
                    label = str(int(r["index"])) + (f" {r['token']!r}" if kind == "token" and r["token"] else "")
                    where = f"L{_layer(r['layer'])} " if not pd.isna(r["layer"]) else ""
                    cells.append(f"{where}{r['module']} {r['axis']} {label} {fmt(r['energy_share'], 'pct')}")
                nrows.append([run, "; ".join(cells)])
            if nrows:
                out += [Para(f"The {TOP} {what} that moved most per run, largest first (largest ||D[i, :]||^2 or "
                             f"||D[:, j]||^2): layer, module, row or column, share of their tensor's update energy."),
                        Table(["run", f"top {TOP} {what.split(' (')[0]}"], nrows, ["l", "l"])]
    return out
