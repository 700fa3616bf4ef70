"""Typed run metadata: what a result's `meta` dict holds, as frozen dataclasses.

On disk (parquet key-value metadata, meta.json) and in `Result.meta` the metadata stays a plain
JSON dict, written by the engine. `RunInfo.from_dict(meta)` reads such a dict (also one from an
older version, or a partial one written by hand: missing keys take the defaults below, unknown keys
are kept in `extra`) and `to_dict()` gives the dict back. Consumers read `Result.info` instead of
chains of `meta.get(...)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from updelta.metrics import schema


def _known(cls) -> set[str]:
    return {f.name for f in fields(cls)} - {"extra"}


def _extra(cls, d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in _known(cls)}


@dataclass(frozen=True)
class Identity:
    """One checkpoint's identity (`Checkpoint.identity()`): path, format, files, sizes, dtypes, fingerprint."""

    path: str | None = None
    format: str | None = None
    files: tuple[dict, ...] = ()
    bytes: int | None = None
    n_tensors: int | None = None
    n_params: int | None = None
    dtypes: dict[str, int] = field(default_factory=dict)
    fingerprint: str | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict | None) -> "Identity":
        d = d or {}
        return cls(d.get("path"), d.get("format"), tuple(d.get("files") or ()), d.get("bytes"), d.get("n_tensors"),
                   d.get("n_params"), dict(d.get("dtypes") or {}), d.get("fingerprint"), _extra(cls, d))

    def to_dict(self) -> dict:
        return {"path": self.path, "format": self.format, "files": [dict(f) for f in self.files], "bytes": self.bytes,
                "n_tensors": self.n_tensors, "n_params": self.n_params, "dtypes": dict(self.dtypes),
                "fingerprint": self.fingerprint, **self.extra}


@dataclass(frozen=True)
class Options:
    """The engine options a result was computed with (`DiffOptions.as_dict()`); typed access to the few that
    consumers read, every option in `values`."""

    values: dict = field(default_factory=dict)

    @property
    def atol(self) -> float:
        return float(self.values.get("atol", schema.DEFAULT_ATOL))

    @property
    def eta(self) -> float:
        return float(self.values.get("eta", schema.DEFAULT_ETA))

    @property
    def topk(self) -> int | None:
        return self.values.get("topk")

    @property
    def spectral(self) -> str | None:
        return self.values.get("spectral")

    def get(self, name: str, default: Any = None) -> Any:
        return self.values.get(name, default)

    @classmethod
    def from_dict(cls, d: dict | None) -> "Options":
        return cls(dict(d or {}))

    def to_dict(self) -> dict:
        return dict(self.values)


@dataclass(frozen=True)
class Tied:
    """A tensor absent from a checkpoint and read from the tensor it is tied to (`side`: base, finetuned, both)."""

    name: str
    run: str
    side: str
    to: str

    @classmethod
    def from_dict(cls, d: dict) -> "Tied":
        return cls(d.get("name", "?"), d.get("run", "?"), d.get("side", "both"), d.get("to", "?"))

    def to_dict(self) -> dict:
        return {"name": self.name, "run": self.run, "side": self.side, "to": self.to}


@dataclass(frozen=True)
class ShapeNote:
    """A tensor whose shape differs between base and run (resized: compared on the base's rows; or skipped)."""

    name: str
    run: str
    base_shape: tuple[int, ...]
    ft_shape: tuple[int, ...]

    @classmethod
    def from_dict(cls, d: dict) -> "ShapeNote":
        return cls(d.get("name", "?"), d.get("run", "?"), tuple(d.get("base_shape") or ()),
                   tuple(d.get("ft_shape") or ()))

    def to_dict(self) -> dict:
        return {"name": self.name, "run": self.run, "base_shape": list(self.base_shape),
                "ft_shape": list(self.ft_shape)}


@dataclass(frozen=True)
class PairingNotes:
    """What pairing by name found (`pairing.pair_checkpoints`): the family and every tensor not compared as is."""

    family: str | None = None
    tied: tuple[Tied, ...] = ()
    only_in_base: dict[str, tuple[str, ...]] = field(default_factory=dict)  # run -> names
    only_in_run: dict[str, tuple[str, ...]] = field(default_factory=dict)
    resized: tuple[ShapeNote, ...] = ()
    skipped_shape: tuple[ShapeNote, ...] = ()
    non_float: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()
    filtered_out: int = 0
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict | None) -> "PairingNotes":
        d = d or {}
        return cls(d.get("family"), tuple(Tied.from_dict(x) for x in d.get("tied") or ()),
                   {r: tuple(v) for r, v in (d.get("only_in_base") or {}).items()},
                   {r: tuple(v) for r, v in (d.get("only_in_run") or {}).items()},
                   tuple(ShapeNote.from_dict(x) for x in d.get("resized") or ()),
                   tuple(ShapeNote.from_dict(x) for x in d.get("skipped_shape") or ()),
                   tuple(d.get("non_float") or ()), tuple(d.get("ignored") or ()), int(d.get("filtered_out") or 0),
                   _extra(cls, d))

    def to_dict(self) -> dict:
        return {"family": self.family, "tied": [t.to_dict() for t in self.tied],
                "only_in_base": {r: list(v) for r, v in self.only_in_base.items()},
                "only_in_run": {r: list(v) for r, v in self.only_in_run.items()},
                "resized": [x.to_dict() for x in self.resized],
                "skipped_shape": [x.to_dict() for x in self.skipped_shape], "non_float": list(self.non_float),
                "ignored": list(self.ignored), "filtered_out": self.filtered_out, **self.extra}


@dataclass(frozen=True)
class SkippedPair:
    """A pair of runs whose cross-run metrics were not computed, and why (different bases: `runbases`)."""

    run_a: str
    run_b: str
    why: str

    @classmethod
    def from_dict(cls, d: dict) -> "SkippedPair":
        return cls(str(d.get("run_a", "?")), str(d.get("run_b", "?")), str(d.get("why", "")))

    def to_dict(self) -> dict:
        return {"run_a": self.run_a, "run_b": self.run_b, "why": self.why}


@dataclass(frozen=True)
class RunInfo:
    """The metadata of one diff/compare (see the module docstring)."""

    updelta_version: str | None = None
    options: Options = field(default_factory=Options)
    base: Identity = field(default_factory=Identity)
    runs: dict[str, Identity] = field(default_factory=dict)
    run_order: tuple[str, ...] = ()
    pairs: tuple[tuple[str, str], ...] = ()
    pairing: PairingNotes = field(default_factory=PairingNotes)
    device: str | None = None
    kernel: str | None = None
    hist_edges: tuple[float, ...] | None = None
    seconds: float | None = None
    conventions: dict[str, str] = field(default_factory=dict)
    # The base each run was measured from (docs/inputs.md, Per-run bases); a run not listed: `base`.
    run_bases: dict[str, Identity] = field(default_factory=dict)
    pairs_skipped: tuple[SkippedPair, ...] = ()  # pairs of runs with different bases: no cross-run metrics
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict | None) -> "RunInfo":
        d = d or {}
        he = d.get("hist_edges")
        return cls(d.get("updelta_version"), Options.from_dict(d.get("options")), Identity.from_dict(d.get("base")),
                   {r: Identity.from_dict(v) for r, v in (d.get("runs") or {}).items()},
                   tuple(str(r) for r in d.get("run_order") or ()), tuple(tuple(p) for p in d.get("pairs") or ()),
                   PairingNotes.from_dict(d.get("pairing")), d.get("device"), d.get("kernel"),
                   None if he is None else tuple(he), d.get("seconds"), dict(d.get("conventions") or {}),
                   {r: Identity.from_dict(v) for r, v in (d.get("run_bases") or {}).items()},
                   tuple(SkippedPair.from_dict(x) for x in d.get("pairs_skipped") or ()), _extra(cls, d))

    def to_dict(self) -> dict:
        return {"updelta_version": self.updelta_version, "options": self.options.to_dict(),
                "base": self.base.to_dict(), "runs": {r: i.to_dict() for r, i in self.runs.items()},
                "run_order": list(self.run_order), "pairs": [list(p) for p in self.pairs],
                "pairing": self.pairing.to_dict(), "device": self.device, "kernel": self.kernel,
                "hist_edges": None if self.hist_edges is None else list(self.hist_edges), "seconds": self.seconds,
                "conventions": dict(self.conventions),
                "run_bases": {r: i.to_dict() for r, i in self.run_bases.items()},
                "pairs_skipped": [p.to_dict() for p in self.pairs_skipped], **self.extra}

    def run(self, name: str) -> Identity:
        """The identity of run `name` (an empty one when not recorded)."""
        return self.runs.get(name) or Identity()

    def base_of(self, name: str) -> Identity:
        """The identity of the checkpoint run `name` was measured from: its own base, else the common base."""
        return self.run_bases.get(name) or self.base

    def has_own_base(self, name: str) -> bool:
        """Whether run `name` was measured from a base other than the common one."""
        own = self.run_bases.get(name)
        return own is not None and own != self.base


def info(meta) -> RunInfo:
    """`RunInfo` of a meta dict (or a `RunInfo`, returned as is; None: an empty one)."""
    return meta if isinstance(meta, RunInfo) else RunInfo.from_dict(meta)
