"""The report's logit-lens section: per run, the tokens at the two ends of the largest singular directions of its
output-side updates, read through the base's final norm and unembedding (`Result.lens`, docs/metrics.md, Logit lens
of the update).

The ends are named neutrally (+ end, - end): the sign of a singular direction is not fixed by the weights alone. The
convention (docs/metrics.md, Sign convention) makes each direction's largest-|score| token positive, so "+ end" is
not "what the fine-tune promotes": for inputs whose projection on v_i is negative the two ends swap."""
from __future__ import annotations

import pandas as pd

from updelta.report.document import Heading, Para, Table
from updelta.report.text import fmt

DIRECTIONS = 6  # directions shown per run, largest sigma first (fewer with many runs: `directions`)
ROWS = 24  # the table's rows at most: with more than 4 runs each run shows fewer directions (at least 2)


def directions(n_runs: int) -> int:
    """Directions shown per run: DIRECTIONS, fewer when the runs would make the table longer than ROWS rows (the
    rest are in tables/lens.parquet)."""
    return max(2, min(DIRECTIONS, ROWS // max(n_runs, 1)))
TOKENS = 5  # tokens shown per end


def _label(row) -> str:
    tok = row["token"]
    if tok is None or (isinstance(tok, float) and pd.isna(tok)):
        return f"#{int(row['token_id'])}"
    return repr(str(tok)).replace("`", "\\x60")


def _tokens(g: pd.DataFrame, sign: str) -> str:  # sign: the data's "promote" (+ end) or "suppress" (- end)
    part = g[g["sign"] == sign].sort_values("rank", kind="stable").head(TOKENS)
    return ", ".join(f"{_label(r)} {fmt(float(r['score']))}" for _, r in part.iterrows())


def lens_blocks(result) -> list:
    lens = getattr(result, "lens", None)
    if lens is None or lens.empty:
        return []
    note = (result.meta.get("pairing") or {}).get("lens") or {}
    gain = "the final norm's weight" + (f" + {fmt(note['norm_offset'])}" if note.get("norm_offset") else "")
    head = note.get("head") or "the unembedding"
    k = directions(len([r for r in result.runs if (lens["run"] == r).any()]))
    out = [Heading("Logit lens of the update: the tokens at each end of its largest directions"),
           Para(f"The {k} largest singular directions sigma_i u_i of each run's output-side updates "
                f"({', '.join(note.get('modules') or [])}), each scaled by {gain} and read by `{head}`"
                f"{' (tied embedding)' if note.get('tied') else ''}: the {TOKENS} tokens at each end of the "
                f"direction's logit changes, with the change for an input of projection +1 on v_i. **Which end an "
                f"input moves towards is not fixed by the weights**: the sign of (u_i, v_i) is a convention that "
                f"makes the largest |change| positive, so for inputs with a negative projection on v_i the + end "
                f"is lowered and the - end raised; neither end is by itself \"what the fine-tune promotes\" "
                f"(docs/metrics.md, Logit lens of the update)"
                f"{'; every direction of every run is in tables/lens.parquet' if k < DIRECTIONS else ''}.")]
    rows = []
    keys = ["run", "name", "direction"]
    for run in result.runs:
        lr = lens[lens["run"] == run]
        if lr.empty:
            continue
        dirs = lr.drop_duplicates(keys).sort_values("sigma", ascending=False, kind="stable").head(k)
        for _, d in dirs.iterrows():
            g = lr[(lr["name"] == d["name"]) & (lr["direction"] == d["direction"])]
            layer = "-" if pd.isna(d["layer"]) else str(int(d["layer"]))
            rows.append([run, layer, str(d["module"]), str(int(d["direction"])), fmt(float(d["sigma"])),
                         _tokens(g, "promote"), _tokens(g, "suppress")])
    if rows:
        out.append(Table(["run", "layer", "module", "dir", "sigma", "+ end (largest change first)",
                          "- end (most negative first)"], rows,
                         ["l", "r", "l", "r", "r", "l", "l"]))
    return out
