"""Trajectories: how the weights moved over the checkpoints of one training run (the tables; torch-free).

    t = updelta.trajectory.trajectory("base/", ["out/checkpoint-*"])   # runs the scan: `api.trajectory`
    t.table[t.table.level == "model"][["step", "rel_delta", "update_rel", "cos_prev_update"]]

One streaming pass (the compare engine, each checkpoint read once) measures every checkpoint
W_k against the base W0 (every per-tensor metric, D_k = W_k - W0) and, instead of all pairs,
only the pairs of checkpoints one and two apart. Their dot products <D_i, D_j> give the Gram
entries from which the updates between consecutive checkpoints U_k = W_k - W_{k-1} =
D_k - D_{k-1} (U_first = D_first) follow exactly, without reading anything twice:

    ||U_k||^2          = G(k,k) - 2 G(k-1,k) + G(k-1,k-1)
    <U_{k-1}, U_k>     = G(k-1,k) - G(k-1,k-1) - G(k-2,k) + G(k-2,k-1)       (G(-1, .) = 0)

All sums are float64 over float32 deltas (exact for bf16 storage). Columns added to the
per-step metrics: `update_fro` = ||U_k||_F, `update_rel` = ||U_k||_F / ||W0||_F,
`cos_prev_update` = cos(U_{k-1}, U_k) (the cosine between consecutive updates) and
`cos_delta_prev` = cos(D_{k-1}, D_k). Groups (layer, component, whole model) combine
sums of dot products and squares, never averages of ratios. An update whose squared norm is
below 1e-11 of the accumulated ones reads as 0 (float64 rounding of the Gram entries).
"""
from __future__ import annotations

import glob
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from updelta.atomic import atomic_path
from updelta.errors import UpdeltaError
from updelta.tables.aggregate import aggregate_tensors
from updelta.tables.result import META_KEY, from_tensors, load, read_parquet

STEP_RE = re.compile(r"(?:checkpoint|ckpt|step|iter|global_step)[-_]?(\d+)", re.IGNORECASE)
GLOB_CHARS = set("*?[")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
TOL = 1e-11
LEVEL_KEYS = {"model": [], "component": ["component"], "layer": ["layer"]}
UPDATE_COLS = ["update_fro", "update_rel", "cos_prev_update", "cos_delta_prev"]


def step_of(path: str | os.PathLike) -> int:
    """The training step in a checkpoint's name: `checkpoint-500` -> 500 (else the last number in the name)."""
    p = Path(str(path).rstrip("/"))
    name = p.stem if p.suffix.lower() in WEIGHT_SUFFIXES else p.name
    m = STEP_RE.search(name)
    if m:
        return int(m.group(1))
    nums = re.findall(r"\d+", name)
    if not nums:
        raise UpdeltaError(f"{path}: no step number in the name; name checkpoints like checkpoint-500")
    return int(nums[-1])


def find_checkpoints(specs) -> list[tuple[int, Path]]:
    """Folders/files or globs (expanded here too, for quoted globs) -> [(step, path)] ordered by step.

    A folder holding `checkpoint-*` folders (a training output or a trainer's run folder) stands for those;
    its own final weights, if any, carry no step number and are left out.
    """
    paths: list[Path] = []
    for s in specs:
        p = Path(s)
        if p.exists():
            subs = sorted(q for q in p.glob("checkpoint-*") if q.is_dir()) if p.is_dir() else []
            paths += subs or [p]
        elif GLOB_CHARS & set(str(s)):
            hits = sorted(Path(x) for x in glob.glob(str(s)))
            if not hits:
                raise UpdeltaError(f"{s}: the pattern matches no checkpoint")
            paths += hits
        else:
            raise UpdeltaError(f"{s}: no such checkpoint (a folder, a weights file or a glob like out/checkpoint-*)")
    seen: dict[int, Path] = {}
    for p in dict.fromkeys(paths):
        k = step_of(p)
        if k in seen and seen[k].resolve() != p.resolve():
            raise UpdeltaError(f"{seen[k]} and {p} have the same step number {k}; give one checkpoint per step")
        seen[k] = p
    if not seen:
        raise UpdeltaError("no checkpoint given; pass folders or a glob such as out/checkpoint-*")
    return sorted(seen.items())


def step_run_name(step: int) -> str:
    return f"step-{step}"


@dataclass
class Trajectory:
    """Per-step metrics (`table`, tidy: one row per step and level/group/tensor) and the compare `result`."""

    table: pd.DataFrame
    result: object
    meta: dict = field(default_factory=dict)

    def model(self) -> pd.DataFrame:
        """The whole-model rows, one per step."""
        return self.table[self.table["level"] == "model"].reset_index(drop=True)

    def save(self, out: str | os.PathLike) -> Path:
        """Write `trajectory.parquet` (meta in its key-value metadata) into folder `out`, atomically."""
        import pyarrow as pa  # pyarrow: loaded only when saving
        import pyarrow.parquet as pq  # pyarrow: loaded only when saving

        out = Path(out)
        if out.exists() and not out.is_dir():
            raise UpdeltaError(f"{out}: --out takes a folder (trajectory.parquet is written into it)")
        path = out / "trajectory.parquet"
        table = pa.Table.from_pandas(self.table, preserve_index=False)
        md = dict(table.schema.metadata or {})
        md[META_KEY] = json.dumps(self.meta, default=str).encode()
        with atomic_path(path) as tmp:
            pq.write_table(table.replace_schema_metadata(md), tmp)
        return path


def _gram_rows(res, steps: list[int]) -> pd.DataFrame:
    """Per (run, tensor): uu = ||U_k||^2, uu_prev = ||U_{k-1}||^2, up = <U_{k-1}, U_k>, and the
    D-cosine sums (dd = <D_{k-1}, D_k>, ss_prev, ss) of consecutive checkpoints."""
    t = res.tensors
    names = [step_run_name(s) for s in steps]
    idx = {n: i for i, n in enumerate(names)}
    ss = {(r, n): float(f) ** 2 for r, n, f in zip(t["run"], t["name"], t["delta_fro"])}
    dots: dict[tuple[int, int, str], float] = {}
    p = res.pairs
    if p is not None and not p.empty:
        for a, b, n, d in zip(p["run_a"], p["run_b"], p["name"], p["dot"]):
            dots[(idx[a], idx[b], n)] = float(d)

    def G(i: int, j: int, n: str) -> float:
        if i < 0 or j < 0:
            return 0.0
        if i == j:
            return ss.get((names[i], n), math.nan)
        i, j = min(i, j), max(i, j)
        return dots.get((i, j, n), math.nan)

    def norm2(k: int, n: str) -> float:
        v = G(k, k, n) - 2 * G(k - 1, k, n) + G(k - 1, k - 1, n)
        scale = G(k, k, n) + G(k - 1, k - 1, n)
        return 0.0 if abs(v) <= TOL * scale else max(v, 0.0)

    rows = []
    for r, n in zip(t["run"], t["name"]):
        k = idx[r]
        uu = norm2(k, n)
        if k >= 1:
            uu_prev = norm2(k - 1, n)
            up = G(k - 1, k, n) - G(k - 1, k - 1, n) - G(k - 2, k, n) + G(k - 2, k - 1, n)
            dd, ss_prev, ss_k = G(k - 1, k, n), G(k - 1, k - 1, n), G(k, k, n)
        else:
            uu_prev = up = dd = ss_prev = ss_k = math.nan
        rows.append({"run": r, "name": n, "uu": uu, "uu_prev": uu_prev, "up": up, "dd": dd, "ss_prev": ss_prev,
                     "ss": ss_k})
    return pd.DataFrame(rows)


def _update_cols(g: pd.DataFrame, base_ss: pd.Series) -> pd.DataFrame:
    """Update columns from summed Gram quantities (one row per group)."""
    out = pd.DataFrame(index=g.index)
    out["update_fro"] = np.sqrt(g["uu"])
    out["update_rel"] = out["update_fro"] / np.sqrt(base_ss).replace(0, np.nan)
    den = np.sqrt(g["uu_prev"] * g["uu"])
    out["cos_prev_update"] = g["up"] / den.replace(0, np.nan)
    den2 = np.sqrt(g["ss_prev"] * g["ss"])
    out["cos_delta_prev"] = g["dd"] / den2.replace(0, np.nan)
    return out


def build_table(res, steps: list[int], paths: list[Path]) -> pd.DataFrame:
    """The tidy trajectory table: levels model, component, layer (all components of a layer) and tensor."""
    t = res.tensors.copy()
    gram = _gram_rows(res, steps)
    t = t.merge(gram, on=["run", "name"], how="left")
    t["base_ss"] = t["base_fro"] ** 2
    step_of_run = {step_run_name(s): s for s in steps}
    path_of_run = {step_run_name(s): str(p) for s, p in zip(steps, paths)}
    sums = ["uu", "uu_prev", "up", "dd", "ss_prev", "ss", "base_ss"]
    frames = []
    for level, keys in LEVEL_KEYS.items():
        by = ["run"] + keys
        src = t[t["layer"].notna()] if level == "layer" else t
        if src.empty:
            continue
        grp = [src[k] for k in by]
        g = src[sums].groupby(grp, dropna=False, sort=False, observed=True).sum(min_count=1)
        # a group's update figures need every tensor's Gram entries: NaN where any is missing
        g = g.mask(src[sums].isna().groupby(grp, dropna=False, sort=False, observed=True).any())
        upd = _update_cols(g, g["base_ss"]).reset_index()
        frames.append(aggregate_tensors(src, by).merge(upd, on=by, how="left").assign(level=level))
    tt = t.copy()
    upd = _update_cols(tt, tt["base_ss"])
    frames.append(pd.concat([tt.drop(columns=sums).reset_index(drop=True), upd.reset_index(drop=True)], axis=1)
                  .assign(level="tensor"))
    out = pd.concat(frames, ignore_index=True, sort=False)
    out["step"] = out["run"].map(step_of_run).astype("int64")
    out["checkpoint"] = out["run"].map(path_of_run)
    if "layer" in out:
        out["layer"] = out["layer"].astype("Int64")
    level_order = {"model": 0, "component": 1, "layer": 2, "tensor": 3}
    out = out.assign(_l=out["level"].map(level_order)).sort_values(["_l", "step"], kind="stable").drop(columns="_l")
    first = ["level", "step", "checkpoint", "run", "layer", "component", "name"]
    cols = [c for c in first if c in out.columns] + [c for c in out.columns if c not in first]
    return out[cols].reset_index(drop=True)


def is_trajectory(path: str | os.PathLike) -> bool:
    """Whether `path` is a trajectory table: a `trajectory.parquet` file or a folder holding one (and no
    compare output)."""
    p = Path(path)
    if p.is_dir():
        return (p / "trajectory.parquet").is_file() and not (p / "tensors.parquet").exists()
    return p.name == "trajectory.parquet" and p.is_file()


def load_table(path: str | os.PathLike) -> Trajectory:
    """Read a trajectory table (`Trajectory.save`, `updelta trajectory --out`, or the transformers callback's
    `out=`): a `trajectory.parquet` file or its folder. `result` is the per-tensor rows as a `Result`, one run per
    step (`as_result`)."""
    p = Path(path)
    f = p / "trajectory.parquet" if p.is_dir() else p
    table, meta = read_parquet(f)
    if "level" not in table.columns or "step" not in table.columns:
        raise UpdeltaError(f"{f}: not a trajectory table (no level/step columns); pass the trajectory.parquet "
                           f"written by `updelta trajectory --out` or by the training callback")
    t = Trajectory(table, None, meta)
    t.result = as_result(t)
    return t


def as_result(t: Trajectory):
    """The per-tensor rows of a trajectory as a `Result` with one run per step (`step-N`), for plots and reports."""
    tab = t.table
    rows = tab[tab["level"] == "tensor"].copy()
    drop = ["level", "step", "checkpoint", *UPDATE_COLS, "base_ss"]
    steps = sorted(int(s) for s in rows["step"].unique())
    order = {step_run_name(s): i for i, s in enumerate(steps)}
    rows = rows.assign(_o=rows["run"].map(order)).sort_values("_o", kind="stable")
    tensors = rows.drop(columns=[c for c in drop + ["_o"] if c in rows.columns]).reset_index(drop=True)
    meta = dict(t.meta)
    meta["run_order"] = list(order)
    runs = dict(meta.get("runs") or {})
    meta["runs"] = {r: runs.get(r, {}) for r in order}
    return from_tensors(tensors, pd.DataFrame(), meta)


def load_result(path: str | os.PathLike):
    """A saved result (`result.load`) or a trajectory table as a `Result` (one run per step): what `updelta plot`
    and `updelta report --from` read."""
    if is_trajectory(path):
        return load_table(path).result
    return load(path)
