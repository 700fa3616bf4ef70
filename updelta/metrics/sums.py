"""Partial sums of the fused pass and the columns they finalize into (torch-free).

`Sums` (one run against the base) and `PairSums` (two runs) add up the per-block records
`schema.BlockSums` / `schema.PairBlockSums` that the C kernel (through `scan.jobs.kernel`) and the torch
references (`elementwise.partial_sums`, `pairwise.pair_partial_sums`) return. `finalize` and
`finalize_pair` turn a tensor's sums into its row: the raw sums themselves (float64 /
int64, so that every aggregate is recomputed from sums) and the figures derived from them by
the formulas declared in `updelta.metrics.schema` (the same code derives aggregates: `schema.derive`).
Definitions: docs/metrics.md ("Norms and direction", "Update sparsity", "Across runs").
"""
from __future__ import annotations

import math

from updelta.metrics import schema
from updelta.metrics.schema import MAX_FIELDS, SUM_COLUMNS, BlockSums, PairBlockSums, field_types  # noqa: F401

CONVS = schema.CONVS
_BLOCK_TYPES, _PAIR_TYPES = field_types(BlockSums), field_types(PairBlockSums)


class Sums:
    """A tensor's partial sums, added block by block (`add`) from `BlockSums` records; `finalize` computes every
    cheap metric from them. Fields: those of `schema.BlockSums`, declared there once."""

    __slots__ = BlockSums._fields

    def __init__(self, **values):
        for f, kind in _BLOCK_TYPES.items():
            setattr(self, f, values.get(f, kind(0)))

    def add(self, b: BlockSums) -> None:
        """Add one block's record (maxima for `MAX_FIELDS`, sums for the rest)."""
        if not isinstance(b, BlockSums):
            raise TypeError(f"Sums.add takes a BlockSums record, not {type(b).__name__}")
        for f in BlockSums._fields:
            v = getattr(b, f)
            setattr(self, f, max(getattr(self, f), float(v)) if f in MAX_FIELDS else getattr(self, f) + v)

    def record(self) -> BlockSums:
        """The sums so far as one record (what `add` takes)."""
        return BlockSums(*(getattr(self, f) for f in BlockSums._fields))

    def columns(self) -> dict:
        """The raw-sum columns of the schema (float64 / int64)."""
        return {col: _BLOCK_TYPES[f](getattr(self, f)) for f, col in SUM_COLUMNS.items()}


def finalize(s: Sums) -> dict:
    """The cheap metric columns and raw sums of a tensor from its partial sums (NaN where undefined)."""
    raw = s.columns()
    out = schema.derive(raw, schema.TENSORS)
    row = {k: out[k] for k in ("delta_fro", "base_fro", "rel_delta")}
    row["delta_max"] = s.max_abs if s.used else math.nan
    row.update({k: out[k] for k in out if k not in row})
    return {**row, **raw}


class PairSums:
    """Partial sums of one tensor for one pair of runs, added from `PairBlockSums` records."""

    __slots__ = PairBlockSums._fields

    def __init__(self, **values):
        for f, kind in _PAIR_TYPES.items():
            setattr(self, f, values.get(f, kind(0)))

    def add(self, b: PairBlockSums) -> None:
        if not isinstance(b, PairBlockSums):
            raise TypeError(f"PairSums.add takes a PairBlockSums record, not {type(b).__name__}")
        for f in PairBlockSums._fields:
            setattr(self, f, getattr(self, f) + getattr(b, f))


def finalize_pair(s: PairSums, changed_a: dict[str, int], changed_b: dict[str, int], expected_both: dict[str, float],
                  n: int) -> dict:
    """Pair columns from partial sums, per-run changed counts and the expected intersection of independent masks.

    `expected_both[conv]` is sum over tensors of n_t d_a,t d_b,t (one tensor: |A| |B| / n).
    """
    both = {"exact": s.both_exact, "atol": s.both_atol, "rtol": s.both_rtol}
    raw = {"dot": float(s.dot), "ss_delta_a": float(s.ss_a), "ss_delta_b": float(s.ss_b), "n_compared": int(n),
           "n_sign_agree": int(s.sign_agree)}
    for c in CONVS:
        raw.update({f"n_changed_a_{c}": int(changed_a[c]), f"n_changed_b_{c}": int(changed_b[c]),
                    f"n_both_{c}": int(both[c]), f"expected_both_{c}": float(expected_both[c])})
    return pair_row(raw, schema.derive(raw, schema.PAIRS))


def pair_row(raw: dict, derived: dict) -> dict:
    """A pair row (or table, with arrays) in the schema's column order: derived figures and raw sums."""
    both = {**derived, **raw}
    names = [k for k in schema.columns(schema.PAIRS) if k in both and k != "n_compared"]
    names.insert(names.index("delta_fro_b") + 1, "n_compared")
    return {k: both[k] for k in names}
