"""Partial sums of the fused pass and the columns they finalize into (torch-free).

`Sums` (one run against the base) and `PairSums` (two runs) are what the C kernel
`updelta._fused` and the torch references (`elementwise.partial_sums`,
`pairwise.pair_partial_sums`) return per block; the engine adds blocks up. `finalize` and
`finalize_pair` turn a tensor's sums into its row: the raw sums themselves (float64 /
int64, so that every aggregate is recomputed from sums) and the figures derived from them by
the formulas declared in `updelta.metrics.schema` (the same code derives aggregates: `schema.derive`).
Definitions: docs/metrics.md ("Norms and direction", "Update sparsity", "Across runs").
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from updelta.metrics import schema

CONVS = schema.CONVS


@dataclass
class Sums:
    """Partial sums of one tensor (or block) from which `finalize` computes every cheap metric."""

    used: int = 0  # element pairs with both values finite
    nonfinite_base: int = 0
    nonfinite_ft: int = 0
    ss_d: float = 0.0  # sum D^2
    ss_base: float = 0.0  # sum W0^2
    dot: float = 0.0  # sum D * W0
    sum_abs: float = 0.0  # sum |D|
    max_abs: float = 0.0  # max |D|
    eq: int = 0  # W1 == W0
    le_atol: int = 0  # |D| <= atol
    le_rtol: int = 0  # |D| <= eta * max(|W0|, |W1|)

    def add(self, t: tuple) -> None:
        """Add a tuple in the order of `partial_sums`/the C kernel."""
        (used, nfb, nff, ss_d, ss_b, dot, sabs, mx, eq, at, rt) = t
        self.used += used
        self.nonfinite_base += nfb
        self.nonfinite_ft += nff
        self.ss_d += ss_d
        self.ss_base += ss_b
        self.dot += dot
        self.sum_abs += sabs
        self.max_abs = max(self.max_abs, float(mx))
        self.eq += eq
        self.le_atol += at
        self.le_rtol += rt

    def columns(self) -> dict:
        """The raw-sum columns of the schema (float64 / int64)."""
        return {"n_compared": int(self.used), "nonfinite_base": int(self.nonfinite_base),
                "nonfinite_ft": int(self.nonfinite_ft), "ss_delta": float(self.ss_d), "ss_base": float(self.ss_base),
                "dot_delta_base": float(self.dot), "sum_abs_delta": float(self.sum_abs), "n_eq": int(self.eq),
                "n_le_atol": int(self.le_atol), "n_le_rtol": int(self.le_rtol)}


def finalize(s: Sums) -> dict:
    """The cheap metric columns and raw sums of a tensor from its partial sums (NaN where undefined)."""
    raw = s.columns()
    out = schema.derive(raw, schema.TENSORS)
    row = {k: out[k] for k in ("delta_fro", "base_fro", "rel_delta")}
    row["delta_max"] = s.max_abs if s.used else math.nan
    row.update({k: out[k] for k in out if k not in row})
    return {**row, **raw}


@dataclass
class PairSums:
    """Partial sums of one tensor for one pair of runs."""

    used: int = 0
    dot: float = 0.0
    ss_a: float = 0.0
    ss_b: float = 0.0
    both_exact: int = 0
    both_atol: int = 0
    both_rtol: int = 0
    sign_agree: int = 0

    def add(self, t: tuple) -> None:
        used, dot, ssa, ssb, be, ba, br, sg = t
        self.used += used
        self.dot += dot
        self.ss_a += ssa
        self.ss_b += ssb
        self.both_exact += be
        self.both_atol += ba
        self.both_rtol += br
        self.sign_agree += sg


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
