"""The report's "What the update promotes" section: per run, the tokens that the largest singular directions of its
output-side updates promote and suppress through the base's final norm and unembedding (`Result.lens`,
docs/metrics.md, Logit lens of the update)."""
from __future__ import annotations

import pandas as pd

from updelta.report.document import Heading, Para, Table
from updelta.report.text import fmt

DIRECTIONS = 6  # directions shown per run, largest sigma first
TOKENS = 5  # tokens shown per end


def _label(row) -> str:
    tok = row["token"]
    if tok is None or (isinstance(tok, float) and pd.isna(tok)):
        return f"#{int(row['token_id'])}"
    return repr(str(tok)).replace("`", "\\x60")


def _tokens(g: pd.DataFrame, sign: str) -> str:
    part = g[g["sign"] == sign].sort_values("rank", kind="stable").head(TOKENS)
    return ", ".join(f"{_label(r)} {fmt(float(r['score']))}" for _, r in part.iterrows())


def lens_blocks(result) -> list:
    lens = getattr(result, "lens", None)
    if lens is None or lens.empty:
        return []
    note = (result.meta.get("pairing") or {}).get("lens") or {}
    gain = "the final norm's weight" + (f" + {fmt(note['norm_offset'])}" if note.get("norm_offset") else "")
    head = note.get("head") or "the unembedding"
    out = [Heading("What the update promotes (logit lens)"),
           Para(f"The {DIRECTIONS} largest singular directions sigma_i u_i of each run's output-side updates "
                f"({', '.join(note.get('modules') or [])}), each scaled by {gain} and read by `{head}`"
                f"{' (tied embedding)' if note.get('tied') else ''}: the tokens whose logits the direction raises "
                f"most (promotes) and lowers most (suppresses), with the logit change for an input of unit "
                f"projection on v_i. Signs are fixed so that each direction's strongest effect is a promotion.")]
    rows = []
    keys = ["run", "name", "direction"]
    for run in result.runs:
        lr = lens[lens["run"] == run]
        if lr.empty:
            continue
        dirs = lr.drop_duplicates(keys).sort_values("sigma", ascending=False, kind="stable").head(DIRECTIONS)
        for _, d in dirs.iterrows():
            g = lr[(lr["name"] == d["name"]) & (lr["direction"] == d["direction"])]
            layer = "-" if pd.isna(d["layer"]) else str(int(d["layer"]))
            rows.append([run, layer, str(d["module"]), str(int(d["direction"])), fmt(float(d["sigma"])),
                         _tokens(g, "promote"), _tokens(g, "suppress")])
    if rows:
        out.append(Table(["run", "layer", "module", "dir", "sigma", "promotes", "suppresses"], rows,
                         ["l", "r", "l", "r", "r", "l", "l"]))
    return out
