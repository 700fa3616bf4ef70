"""The result of a diff or compare: tidy DataFrames plus the metadata that explains them.

`Result.tensors` has one row per (run, tensor). Aggregates (`summary`, `components`,
`layers`, and `experts` for mixture-of-experts models: one row per run, layer and routed expert,
docs/experts.md) and cross-run tables (`pairs`, `pairs_layers`, `pairs_components`,
`pairs_summary`) are built once from records; every column is declared in
`updelta.metrics.schema`; they leave out tower tensors unless the `towers` option (`with_towers` rebuilds them
either way, docs/families.md). `meta` holds the options, each checkpoint's identity, pairing notes and
the updelta version as a JSON dict; `info` gives it typed (`updelta.tables.meta.RunInfo`).
With per-run bases (docs/inputs.md, Per-run bases) `summary.base` names the checkpoint each run was
measured from, and `pairs_summary` has a row of nulls for each pair of runs of different bases
(`meta["pairs_skipped"]`); the other pair tables hold the measured pairs only.

Saving: a `.parquet` file (tensors, with `meta` in the file's key-value metadata),
`.csv` or `.json` (the table only; CSV writes list cells such as `shape` as JSON), or a
directory (every table as parquet; what `updelta compare --out` writes). `load(path)`
reads either back, without torch. Results of updelta 0.1.0 (shape as "16x16", no raw-sum
columns) load too: shapes are parsed, sums rebuilt from the ratios (`aggregate.sums_from_ratios`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from updelta.atomic import atomic_dir, atomic_path
from updelta.errors import UpdeltaError
from updelta.metrics import schema
from updelta.metrics.sums import pair_row
from updelta.tables.aggregate import aggregate_pairs, aggregate_tensors, counted, tower_counts, towers_included
from updelta.tables.meta import RunInfo

META_KEY = b"updelta"
TENSOR_COLUMNS = schema.TENSOR_COLUMNS
DIR_FILES = {"tensors": "tensors.parquet", "pairs": "pairs.parquet", "pairs_layers": "pairs_layers.parquet",
             "pairs_summary": "pairs_summary.parquet", "layers": "layers.parquet", "summary": "summary.parquet",
             "components": "components.parquet", "pairs_components": "pairs_components.parquet",
             "experts": "experts.parquet", "heads": "heads.parquet", "pairs_heads": "pairs_heads.parquet",
             "neurons": "neurons.parquet", "lens": "lens.parquet"}
WHERE_TABLES = {"heads": schema.HEAD_COLUMNS, "pairs_heads": schema.PAIR_HEAD_COLUMNS, "neurons": schema.NEURON_COLUMNS,
                "lens": schema.LENS_COLUMNS}


@dataclass
class Result:
    """Per-tensor table, aggregates, cross-run tables and metadata of one diff/compare."""

    tensors: pd.DataFrame
    summary: pd.DataFrame
    components: pd.DataFrame
    layers: pd.DataFrame
    pairs: pd.DataFrame
    pairs_summary: pd.DataFrame
    pairs_components: pd.DataFrame
    pairs_layers: pd.DataFrame
    meta: dict = field(default_factory=dict)
    experts: pd.DataFrame = field(default_factory=pd.DataFrame)  # per (run, layer, expert); empty without experts
    # Where the update sits (docs/metrics.md, Where an update sits): one row per (run, layer, module, part, head)
    # of the attention weights; per (pair, ..., head) the delta cosine; the top neurons / token rows per tensor.
    heads: pd.DataFrame = field(default_factory=lambda: where_table("heads"))
    pairs_heads: pd.DataFrame = field(default_factory=lambda: where_table("pairs_heads"))
    neurons: pd.DataFrame = field(default_factory=lambda: where_table("neurons"))
    # The logit lens (docs/metrics.md, Logit lens of the update): tokens the top directions of each output-side
    # update promote and suppress.
    lens: pd.DataFrame = field(default_factory=lambda: where_table("lens"))

    @property
    def info(self) -> RunInfo:
        """`meta` as typed, frozen dataclasses (`updelta.tables.meta.RunInfo`)."""
        return RunInfo.from_dict(self.meta)

    @property
    def warnings(self) -> list[str]:
        """What the scan warned about (also emitted as `UpdeltaWarning`); stored in meta["warnings"]."""
        return list(self.meta.get("warnings") or [])

    def with_towers(self, include: bool = True) -> "Result":
        """This result with its aggregates rebuilt counting (or leaving out) the tower tensors: the `towers`
        option after the fact (docs/families.md, Towers)."""
        meta = {**self.meta, "options": {**(self.meta.get("options") or {}), "towers": bool(include)}}
        return _with_where(from_tensors(self.tensors.copy(), self.pairs.copy(), meta),
                           {k: getattr(self, k) for k in WHERE_TABLES})

    @property
    def runs(self) -> list[str]:
        return list(self.info.run_order or self.tensors["run"].unique())

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically: `.parquet`/`.csv`/`.json` file (per-tensor table) or a directory (all tables)."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            with atomic_path(path) as tmp:
                _write_parquet(self.tensors, tmp, self.meta)
        elif suffix == ".csv":
            with atomic_path(path) as tmp:
                _flat(self.tensors).to_csv(tmp, index=False)
        elif suffix == ".json":
            with atomic_path(path) as tmp:
                self.tensors.to_json(tmp, orient="records", indent=1)
        elif suffix == "":
            with atomic_dir(path) as tmp:
                for attr, fname in DIR_FILES.items():
                    _write_parquet(getattr(self, attr), tmp / fname, self.meta if attr == "tensors" else None)
                (tmp / "meta.json").write_text(json.dumps(self.meta, indent=1, default=str), encoding="utf-8")
        else:
            raise UpdeltaError(f"{path}: unknown output type {suffix!r}; use .parquet, .csv, .json or a folder")
        return path


def _is_list(v) -> bool:
    return isinstance(v, (list, tuple, np.ndarray))


def _flat(df: pd.DataFrame) -> pd.DataFrame:
    """List columns (lists, or arrays as parquet reads them back) as JSON strings (CSV has no lists)."""
    out = df.copy()
    for c in out.columns:
        if out[c].map(_is_list).any():
            out[c] = out[c].map(lambda v: json.dumps(np.asarray(v).tolist()) if _is_list(v) else v)
    return out


def _write_parquet(df: pd.DataFrame, path: Path, meta: dict | None) -> None:
    table = pa.Table.from_pandas(df, preserve_index=False)
    if meta is not None:
        md = dict(table.schema.metadata or {})
        md[META_KEY] = json.dumps(meta, default=str).encode()
        table = table.replace_schema_metadata(md)
    pq.write_table(table, path)


def _order(df: pd.DataFrame, first: list[str]) -> pd.DataFrame:
    return df[[c for c in first if c in df.columns] + [c for c in df.columns if c not in first]]


def build_result(records: list[dict], pair_records: list[dict], meta: dict,
                 tables: dict[str, list[dict]] | None = None) -> Result:
    """Build every table once from the engine's records (and the rows of the where tables)."""
    tensors = pd.DataFrame.from_records(records) if records else pd.DataFrame(columns=TENSOR_COLUMNS)
    tensors = _order(tensors, TENSOR_COLUMNS)
    res = from_tensors(tensors, pd.DataFrame.from_records(pair_records), meta)
    return _with_where(res, {k: where_table(k, (tables or {}).get(k)) for k in WHERE_TABLES})


def where_table(kind: str, rows: list[dict] | pd.DataFrame | None = None) -> pd.DataFrame:
    """The `heads`, `pairs_heads`, `neurons` or `lens` table from rows (empty, with its columns, when there are none)."""
    cols = list(WHERE_TABLES[kind])
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame.from_records(rows or [], columns=cols)
    df = _order(df, cols)
    for k in ("layer", "head", "index", "rank", "n_compared", "direction", "token_id"):
        if k in df:
            df[k] = df[k].astype("Int64")
    return df.reset_index(drop=True)


def _with_where(res: Result, tables: dict[str, pd.DataFrame]) -> Result:
    for k, df in tables.items():
        setattr(res, k, df)
    return res


def from_tensors(tensors: pd.DataFrame, pairs: pd.DataFrame, meta: dict) -> Result:
    """Derive aggregates from a per-tensor table and a per-tensor pair table."""
    if "shape" in tensors:  # a list of ints per tensor (parquet gives arrays; updelta 0.1.0 wrote "16x16")
        tensors["shape"] = tensors["shape"].map(schema.shape_list)
    for key in ("layer", "expert"):
        if key in tensors:
            tensors[key] = tensors[key].astype("Int64")
        if not pairs.empty and key in pairs:
            pairs[key] = pairs[key].astype("Int64")
    # Tower tensors (vision encoders, projectors) are left out of the aggregates unless the `towers` option;
    # counted, they are keyed by tower, so that a vision block is never text layer N (docs/families.md).
    towers = towers_included(meta)
    if tower_counts(tensors):
        meta = {**meta, "towers": {"included": towers, "tensors": tower_counts(tensors)}}
    t, p = counted(tensors, towers), counted(pairs, towers)
    tw = ["tower"] if towers and "tower" in tensors else []
    tw_p = ["tower"] if towers and "tower" in pairs else []
    return Result(
        tensors=tensors,
        summary=with_bases(aggregate_tensors(t, ["run"]), meta),
        components=aggregate_tensors(t, ["run", *tw, "component"]),
        layers=aggregate_tensors(t, ["run", *tw, "layer", "component"]),
        pairs=pairs,
        pairs_summary=with_skipped(aggregate_pairs(p, []), meta),
        pairs_components=aggregate_pairs(p, [*tw_p, "component"]),
        pairs_layers=aggregate_pairs(p, [*tw_p, "layer", "component"]),
        meta=meta,
        experts=expert_table(tensors),
    )


def with_bases(summary: pd.DataFrame, meta: dict) -> pd.DataFrame:
    """The per-run summary with its `base` column: the path of the checkpoint each run was measured from (its own
    base, else the common one; docs/inputs.md, Per-run bases)."""
    if "run" not in summary or summary.empty:
        return summary
    info = RunInfo.from_dict(meta)
    base = summary["run"].map(lambda r: info.base_of(str(r)).path)
    return summary.assign(base=base.astype(object))


def with_skipped(pairs_summary: pd.DataFrame, meta: dict) -> pd.DataFrame:
    """The whole-model pair table with a row of nulls for every pair whose cross-run metrics were not computed
    (`meta["pairs_skipped"]`: runs of different bases): NaN figures, counts (`n_tensors`, `n_compared`, ...) 0."""
    skipped = RunInfo.from_dict(meta).pairs_skipped
    if not skipped:
        return pairs_summary
    if pairs_summary.empty:  # every pair skipped: the columns a measured pair would have
        raw = {c: np.zeros(0) for c in schema.PAIR_SUMS}
        cols = ["run_a", "run_b", *pair_row(raw, schema.derive(raw, schema.PAIRS)), "n_tensors"]
        ints = {c for c in cols if c in schema.COLUMNS and schema.COLUMNS[c].dtype == "int"}
    else:
        cols = list(pairs_summary.columns)
        ints = {c for c in cols if pd.api.types.is_integer_dtype(pairs_summary[c])}
    n = len(skipped)
    rows = pd.DataFrame({c: (np.zeros(n, dtype="int64") if c in ints else np.full(n, np.nan)) for c in cols})
    rows["run_a"] = [p.run_a for p in skipped]
    rows["run_b"] = [p.run_b for p in skipped]
    if pairs_summary.empty:
        return rows
    return pd.concat([pairs_summary, rows.astype({c: pairs_summary[c].dtype for c in ints})], ignore_index=True)


def expert_table(tensors: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, layer, routed expert): every projection of the expert summed (figures from the summed
    raw sums, as `Result.layers`); empty (with the key columns) when no row has an expert."""
    keys = ["run", "layer", "expert"]
    if "expert" not in tensors or tensors.empty or not tensors["expert"].notna().any():
        return pd.DataFrame(columns=keys)
    out = aggregate_tensors(tensors[tensors["expert"].notna()], keys)
    for k in ("layer", "expert"):
        out[k] = out[k].astype("Int64")
    order = {r: i for i, r in enumerate(pd.unique(tensors["run"]))}  # runs in table order, experts by number
    out = out.assign(_r=out["run"].map(order)).sort_values(["_r", "layer", "expert"], kind="stable")
    return out.drop(columns="_r").reset_index(drop=True)


def read_parquet(path: Path) -> tuple[pd.DataFrame, dict]:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise UpdeltaError(f"{path}: not a readable parquet file ({str(e).splitlines()[0][:120]})") from None
    md = table.schema.metadata or {}
    meta = json.loads(md[META_KEY]) if META_KEY in md else {}
    return table.to_pandas(), meta


def load(path: str | os.PathLike) -> Result:
    """Read a result written by `Result.save` (a `.parquet` file or a directory)."""
    p = Path(path)
    if p.is_dir():
        if not (p / DIR_FILES["tensors"]).exists():
            raise UpdeltaError(f"{p}: no tensors.parquet; pass a folder written by `updelta compare --out`")
        tensors, meta = read_parquet(p / DIR_FILES["tensors"])
        pairs = read_parquet(p / DIR_FILES["pairs"])[0] if (p / DIR_FILES["pairs"]).exists() else pd.DataFrame()
        where = {k: where_table(k, read_parquet(p / DIR_FILES[k])[0]) for k in WHERE_TABLES
                 if (p / DIR_FILES[k]).exists()}
        return _with_where(from_tensors(tensors, pairs, meta), where)
    if p.suffix.lower() == ".parquet" and p.exists():
        tensors, meta = read_parquet(p)
        return from_tensors(tensors, pd.DataFrame(), meta)
    raise UpdeltaError(f"{p}: not a result; pass a .parquet written by `updelta diff --out` "
                       f"or a folder written by `updelta compare --out`")
