"""The zoo's trade-off figure (docs/claims.md, The trade-off table): retention change against the gain on the
run's own task, one point per run, colour by method, marker by task, the seeds of one method and task joined by a
thin line, point area by the update's size (rel_delta).

    fig = tradeoff_figure(rows)       # rows: `updelta.demo.zoo_table.run_rows`
"""
from __future__ import annotations

import math

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from updelta.plot import common as C

TASK_MARKERS = {"target": "o", "knowledge": "s"}
AREA = (20.0, 300.0)  # point area (pt^2) of the smallest and the largest update


def tradeoff_figure(rows: list[dict]) -> Figure:
    """See the module docstring; runs without a gain or a retention change are left out (and counted in the
    note)."""
    ok = [r for r in rows if not (math.isnan(r["gain"]) or math.isnan(r["retention_change"]))]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    colors = {m: C.RUN_COLORS[i % len(C.RUN_COLORS)] for i, m in enumerate(methods)}
    sizes = [r["rel_delta"] for r in ok if not math.isnan(r["rel_delta"])]
    lo, hi = (min(sizes), max(sizes)) if sizes else (0.0, 1.0)

    def area(v: float) -> float:
        if math.isnan(v) or hi <= lo:
            return sum(AREA) / 2
        return AREA[0] + (AREA[1] - AREA[0]) * (v - lo) / (hi - lo)

    with C.style():
        fig = C.new_figure(7.0, 5.0)
        ax = fig.add_subplot(1, 1, 1)
        groups: dict[tuple[str, str], list[dict]] = {}
        for r in ok:
            groups.setdefault((r["method"], r["task"]), []).append(r)
        by_size = sorted(groups.items(), key=lambda kv: -max((area(r["rel_delta"]) for r in kv[1]), default=0))
        for (method, task), rs in by_size:  # the largest points first, so that small ones stay visible
            rs = sorted(rs, key=lambda r: r["seed"])
            if len(rs) > 1:
                ax.plot([r["gain"] for r in rs], [r["retention_change"] for r in rs], color=colors[method],
                        lw=0.8, alpha=0.6, zorder=1)
            ax.scatter([r["gain"] for r in rs], [r["retention_change"] for r in rs],
                       s=[area(r["rel_delta"]) for r in rs], c=colors[method],
                       marker=TASK_MARKERS.get(task, "D"), edgecolors="black", linewidths=0.5, alpha=0.85, zorder=2)
        ax.axhline(0, color="0.6", lw=0.6, zorder=0)
        ax.axvline(0, color="0.6", lw=0.6, zorder=0)
        ax.set_xlabel("gain on the run's own task (after - before)")
        ax.set_ylabel("retention change (after - before)")
        handles = [Line2D([], [], color=colors[m], marker="o", ls="", label=m) for m in methods]
        handles += [Line2D([], [], color="0.3", marker=mk, ls="", label=f"{t} task")
                    for t, mk in TASK_MARKERS.items() if any(r["task"] == t for r in rows)]
        ax.legend(handles=handles, fontsize=8, loc="best", frameon=False)
        left = len(rows) - len(ok)
        note = (f"point area: rel update {lo:.3g} to {hi:.3g}; seeds of one method and task joined"
                + (f"; {left} run(s) without evaluations left out" if left else ""))
        ax.set_title("Gain against retention, one point per run\n" + note, fontsize=9)
    return fig
