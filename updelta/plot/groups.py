"""Runs of a zoo drawn by group: one colour per training method, one marker per task, seeds of one (method, task)
joined, so that the two seeds of one method read as one group (the same run has the same look in every figure).

Where a run's method, task and seed come from, first found wins:
1. its evaluation (eval.json `method`, `task`, `seed`): columns `method`, `task`, `seed` of the table drawn, or
   `meta["run_groups"]` = {run: {"method": ..., "task": ..., "seed": ...}} (the report sets it from the evaluations);
2. its name, when it reads `method-task-sN` (the demo's names, `sft-target-s0`);
3. nothing: the run is a group of its own (one colour per run, as before; no joins).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd
from matplotlib.lines import Line2D

from updelta.plot import common as C

RUN_NAME = re.compile(r"^(?P<method>[A-Za-z][A-Za-z0-9]*)-(?P<task>[A-Za-z][A-Za-z0-9_]*)-s(?P<seed>\d+)$")
SEED_STYLES = ["-", "--", ":", "-."]  # line style per seed where lines are drawn per run


@dataclass(frozen=True)
class Group:
    method: str | None
    task: str | None
    seed: int | None

    @property
    def key(self) -> tuple | None:
        """(method, task): the runs that differ only by seed; None when the method is unknown."""
        return (self.method, self.task) if self.method else None


def _blank(v) -> bool:
    return v is None or (isinstance(v, float) and pd.isna(v)) or v is pd.NA or v == ""


def groups_of(runs: list[str], meta: dict | None = None, table: pd.DataFrame | None = None) -> dict[str, Group]:
    """Each run's (method, task, seed), from its evaluation, else its name, else unknown (module docstring)."""
    given = dict((meta or {}).get("run_groups") or {})
    if table is not None and "run" in table.columns and "method" in table.columns:
        for _, r in table.iterrows():
            if not _blank(r.get("method")):
                given.setdefault(str(r["run"]), {"method": r.get("method"), "task": r.get("task"),
                                                 "seed": r.get("seed")})
    out = {}
    for run in runs:
        g = given.get(run)
        if g and not _blank(g.get("method")):
            seed = g.get("seed")
            out[run] = Group(str(g["method"]).lower(), None if _blank(g.get("task")) else str(g["task"]),
                             None if _blank(seed) else int(seed))
            continue
        m = RUN_NAME.match(run)
        out[run] = Group(m["method"].lower(), m["task"], int(m["seed"])) if m else Group(None, None, None)
    return out


def grouped(groups: dict[str, Group]) -> bool:
    """Whether grouping says anything: every run has a method and some runs share one."""
    keys = [g.key for g in groups.values()]
    return bool(keys) and all(k is not None for k in keys) and len({g.method for g in groups.values()}) < len(keys)


def styles(runs: list[str], meta: dict | None = None, table: pd.DataFrame | None = None) -> dict[str, dict]:
    """{run: {color, marker, ls, group}}: colour per method, marker per task, line style per seed when the runs form
    groups (`grouped`); else the per-run colours and markers of `common` (`ls` solid, `group` None)."""
    gs = groups_of(runs, meta, table)
    if not grouped(gs):
        colors = C.run_colors(meta or {}, runs)
        return {r: {"color": colors[r], "marker": C.marker_of(i), "ls": "-", "group": None}
                for i, r in enumerate(runs)}
    methods = list(dict.fromkeys(gs[r].method for r in runs))
    tasks = list(dict.fromkeys(gs[r].task for r in runs))
    seeds = sorted({gs[r].seed for r in runs if gs[r].seed is not None})
    out = {}
    for r in runs:
        g = gs[r]
        out[r] = {"color": C.RUN_COLORS[methods.index(g.method) % len(C.RUN_COLORS)],
                  "marker": C.MARKERS[tasks.index(g.task) % len(C.MARKERS)],
                  "ls": SEED_STYLES[seeds.index(g.seed) % len(SEED_STYLES)] if g.seed is not None else "-",
                  "group": g}
    return out


def legend_handles(runs: list[str], sty: dict[str, dict], lw: float = 0.0):
    """Legend entries: per method (colour) and per task (marker) when grouped, with a note on seeds; else per run."""

    if not any(s["group"] for s in sty.values()):
        return [Line2D([], [], color=sty[r]["color"], marker=sty[r]["marker"], lw=lw, label=r) for r in runs], "run"
    hs, seen = [], set()
    for r in runs:
        m = sty[r]["group"].method
        if ("m", m) not in seen:
            seen.add(("m", m))
            hs.append(Line2D([], [], color=sty[r]["color"], marker="o", lw=1.2 if lw else 0, label=m))
    tasks = [(sty[r]["group"].task, sty[r]["marker"]) for r in runs]
    if len({t for t, _ in tasks}) > 1:
        for t, mk in dict.fromkeys(tasks):
            hs.append(Line2D([], [], color="#555555", marker=mk, lw=0, label=f"task {t}"))
    seeds = [(sty[r]["group"].seed, sty[r]["ls"]) for r in runs if sty[r]["group"].seed is not None]
    if lw and len({s for s, _ in seeds}) > 1:
        for s, ls in dict.fromkeys(seeds):
            hs.append(Line2D([], [], color="#555555", ls=ls, lw=1.2, label=f"seed {s}"))
    return hs, "method (colour), task (marker)"


def seed_sets(runs: list[str], sty: dict[str, dict]) -> list[list[str]]:
    """The runs of each (method, task) with more than one seed, in run order: the points a figure joins."""
    by: dict[tuple, list[str]] = {}
    for r in runs:
        g = sty[r]["group"]
        if g is not None and g.key is not None:
            by.setdefault(g.key, []).append(r)
    return [v for v in by.values() if len(v) > 1]
