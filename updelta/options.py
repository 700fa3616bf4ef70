"""Options of the diff/compare engine: one typed, frozen object shared by the API and the CLI.

Every field is the single source of truth for its option: its type, default, help text (field metadata) and
allowed range live here and nowhere else. The CLI generates the `diff`, `compare`, `report` and `trajectory`
flags from the fields (`updelta.commands.params`); `__post_init__` checks every value, so a bad option fails
with a one-line `UpdeltaError` naming the flag and the allowed values, from the API as from the CLI, before
any checkpoint is read.

Adding an engine option: add one field here (type, default, help, range) and use it. Report options (what a
report does with its inputs, not how they are measured) live in `ReportOptions`.
"""
from __future__ import annotations

import math
import numbers
import re
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from updelta.errors import UpdeltaError

Spectral = Literal["off", "fast", "full"]
Device = Literal["auto", "cpu", "cuda"]
OnMismatch = Literal["error", "skip"]
Executor = Literal["serial", "threads", "ray"]
MergeDtype = Literal["off", "bfloat16", "float16", "float32"]


def option(default, help: str, *, at_least=None, above=None, at_most=None, below=None, regex: bool = False):
    """A field with its help text and, for numbers, its allowed range (checked by `check_fields`)."""
    meta: dict[str, Any] = {"help": help}
    for k, v in (("at_least", at_least), ("above", above), ("at_most", at_most), ("below", below)):
        if v is not None:
            meta[k] = v
    if regex:
        meta["regex"] = True
    return field(default=default, metadata=meta)


def shared(cls: type, name: str, help: str | None = None):
    """Field `name` of options class `cls` (its default, help text and range) for another options class: one
    declaration, reused (e.g. the training callback's `atol` is `DiffOptions.atol`). `help` overrides the text."""
    f = {x.name: x for x in fields(cls)}[name]
    meta = dict(f.metadata)
    if help is not None:
        meta["help"] = help
    return field(default=f.default, metadata=meta)


@dataclass(frozen=True)
class DiffOptions:
    """Options of `updelta.diff` / `updelta.compare` / `updelta.tables.trajectory` and of the `diff`, `compare`,
    `report`, `trajectory` commands."""

    atol: float = option(1e-5, "Absolute tolerance of the `atol` sparsity convention: an element is unchanged when "
                             "|W1 - W0| <= atol (Mukherjee et al. 2025 use 1e-5 on bf16).", at_least=0)
    eta: float = option(1e-3, "Relative tolerance of the `rtol` sparsity convention (Zhu et al. 2025): unchanged when "
                            "|W1 - W0| <= eta * max(|W0|, |W1|). On bf16 storage 1e-3 equals `exact`.", at_least=0)
    include: tuple[str, ...] = option((), "Regular expression; only tensors whose name matches are compared "
                                        "(repeatable).", regex=True)
    exclude: tuple[str, ...] = option((), "Regular expression; tensors whose name matches are skipped (repeatable).",
                                    regex=True)
    device: Device = option("auto", "Where to compute: auto (CUDA when available), cpu or cuda.")
    on_shape_mismatch: OnMismatch = option("error", "A shape mismatch that is not a vocabulary resize: `error` stops "
                                                  "with the tensor named; `skip` leaves the tensor out and lists it.")
    spectral: Spectral = option("fast", "Spectral work on 2-D updates: off, fast (top-k singular values of the update), "
                                      "or full (exact SVDs, subspace angles, intruders).")
    topk: int = option(16, "How many top singular values of the update the spectral modes keep.", at_least=1)
    spectral_float64: bool = option(False, "Exact (full) spectral work in float64 instead of float32.")
    offprincipal_alpha: float = option(0.05, "Off-principal alignment (Zhu et al.): share of elements in the principal "
                                           "mask of W0 (the chance level of the overlap).", above=0, below=1)
    offprincipal_k: int = option(16, "Off-principal alignment: rank of the reconstruction of W0 that defines the mask.",
                               at_least=1)
    intruder_k: int = option(10, "Intruder dimensions (Shuttleworth et al. 2024; spectral full): how many top left "
                               "singular vectors y_j of W1 are tested against all left singular vectors x_i of W0.",
                           at_least=1)
    intruder_eps: float = option(0.5, "Intruder dimensions: y_j is an intruder when max_i |cos(y_j, x_i)| < eps (the "
                                    "`intruders` column; `intruders_sweep` counts eps = 0.1 .. 0.9).",
                               above=0, at_most=1)
    histogram: bool = option(False, "Count |W1 - W0| per tensor in power-of-two bins (plus exact zeros), for "
                                  "`updelta plot --kind distribution`.")
    executor: Executor = option("threads", "How the per-tensor jobs run: `threads` (a pool of `workers` threads in "
                                         "this process), `serial` (one job at a time in the calling thread) or `ray` "
                                         "(`workers` Ray tasks at once, on a local Ray or a cluster; pip install "
                                         "'updelta[ray]', docs/cluster.md). All run the same plan and give the same "
                                         "numbers.")
    workers: int = option(0, "Per-tensor jobs run at once (0 = one per core, at most 4; always 1 on CUDA). Each spectral "
                           "job gets max(1, torch threads // workers) BLAS threads, whatever the executor.",
                        at_least=0)
    ray_address: str = option("", "--executor ray: the Ray to run on, as ray.init reads it: empty = RAY_ADDRESS, "
                                "else a cluster started with `ray start` on this machine, else a new local Ray; "
                                "`local` = always a new local Ray (shut down when the command ends); "
                                "`ray://HOST:10001` or `HOST:6379` = that cluster (docs/cluster.md).")
    block_elems: int = option(1 << 18, "Elements per streamed block (memory per worker is a few blocks).", at_least=1)
    towers: bool = option(False, "Count the tensors of vision towers and projectors of multimodal checkpoints (the "
                               "`tower` column) in the aggregates and gates, keyed by tower; by default they are "
                               "per-tensor rows only (docs/families.md).")
    progress: bool = option(True, "Show a progress bar on stderr.")
    cache: bool = option(True, "Spectral full: read and keep base-weight decompositions in the cache "
                             "($UPDELTA_CACHE_DIR/spectral, default ~/.cache/updelta/spectral), keyed by a hash of "
                             "each tensor's bytes; --no-cache computes everything afresh (docs/metrics.md).")
    download: bool = option(False, "Fetch a Hub id (org/name[@revision]) that is not in the local Hugging Face cache "
                                 "(weights, indexes, config, tokenizer and adapter files); without it ids are read "
                                 "from the cache only, offline.")
    where: bool = option(True, "Where the update sits (cheap pass): row and column energies of every 2-D update, "
                             "their concentration columns, per-head and top-neuron tables (docs/metrics.md, Where an "
                             "update sits). Off: the cheap sums only.")
    top_neurons: int = option(20, "Neurons (MLP rows or columns) and token rows (embeddings, untied head) kept per "
                                "tensor and run in `Result.neurons`, by share of the update energy.", at_least=0)
    lens_k: int = option(4, "Logit lens of the update (spectral fast and full): how many top singular directions of each "
                          "output-side update (the family's lens modules, e.g. o_proj, down_proj) are pushed through "
                          "the base's final norm and unembedding into `Result.lens`; 0: none (docs/metrics.md).",
                       at_least=0)
    max_memory: str = option("auto", "Spectral memory per job (bytes, K/M/G) or auto: fast streams a larger tensor by "
                                   "row blocks (auto 512M); full refuses it in a warning (auto: no limit).")
    merge_dtype: MergeDtype = option("off", "Adapter runs (PEFT LoRA folders): measure what a checkpoint merged in this "
                                          "dtype would store (D in float32, cast, added to W0 in this dtype), which "
                                          "gives sparsity; `off` measures the exact update from the factors "
                                          "(sparsity null). docs/adapters.md.")

    def __post_init__(self) -> None:
        check_fields(self)
        memory_bytes(self.max_memory)
        if self.ray_address and self.executor != "ray":
            raise UpdeltaError(f"--ray-address {self.ray_address!r} applies to --executor ray only")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["include"] = list(self.include)
        d["exclude"] = list(self.exclude)
        return d

    def replace(self, **changes) -> "DiffOptions":
        return replace(self, **changes)


AUTO_MEMORY = 512 << 20  # `--max-memory auto` for `fast`: tensors whose whole copies exceed 512 MiB are streamed
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def memory_bytes(value: str) -> int | None:
    """`--max-memory` in bytes: None for `auto`, else the number times its unit (K, M, G, T: powers of 1024, an
    optional trailing B or iB); a one-line UpdeltaError naming the flag otherwise."""
    v = str(value).strip()
    if v.lower() == "auto":
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:i?[bB])?", v)
    if not m or float(m.group(1)) * _UNITS[m.group(2).upper()] < 1:
        raise UpdeltaError(f"--max-memory {value!r}: must be `auto` or a positive number of bytes, e.g. 4G, 512M")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


EvalBaseMismatch = Literal["error", "warn"]


@dataclass(frozen=True)
class ReportOptions:
    """Options of `updelta.report.write_report` and of the `report` command (besides the engine's `DiffOptions`)."""

    eval_base_mismatch: EvalBaseMismatch = option(
        "error", "An evaluation (--eval) whose base (its base_fingerprint, else its base path) is not the base its "
                 "run is compared against: `error` stops (compare it with --run-base NAME=ITS_BASE), `warn` writes "
                 "the report with a warning (docs/inputs.md, Per-run bases).")

    def __post_init__(self) -> None:
        check_fields(self)

    def replace(self, **changes) -> "ReportOptions":
        return replace(self, **changes)


def flag(name: str) -> str:
    """The command-line flag of option `name` (`on_shape_mismatch` -> `--on-shape-mismatch`)."""
    return "--" + name.replace("_", "-")


def _range_text(meta: dict) -> str:
    lo = ("[", meta["at_least"]) if "at_least" in meta else ("(", meta["above"]) if "above" in meta else None
    hi = ("]", meta["at_most"]) if "at_most" in meta else (")", meta["below"]) if "below" in meta else None
    if lo and hi:
        return f"in {lo[0]}{lo[1]}, {hi[1]}{hi[0]}"
    if lo:
        return f"{'>=' if lo[0] == '[' else '>'} {lo[1]}"
    if hi:
        return f"{'<=' if hi[0] == ']' else '<'} {hi[1]}"
    return ""


def _in_range(v, meta: dict) -> bool:
    return (("at_least" not in meta or v >= meta["at_least"]) and ("above" not in meta or v > meta["above"])
            and ("at_most" not in meta or v <= meta["at_most"]) and ("below" not in meta or v < meta["below"]))


def _checked(name: str, hint: Any, meta: dict, v: Any) -> Any:
    """`v` coerced to the field's type (tuple from a list or one string, int/float from any number), or a one-line
    UpdeltaError naming the flag and the allowed values."""
    opt = flag(name)
    if typing.get_origin(hint) is Literal:
        allowed = typing.get_args(hint)
        if v not in allowed:
            raise UpdeltaError(f"{opt} {v!r}: choose one of {', '.join(map(str, allowed))}")
        return v
    if hint is bool:
        if isinstance(v, str) or v not in (True, False):
            raise UpdeltaError(f"{opt} {v!r}: must be true or false")
        return bool(v)
    if hint is int or hint is float:
        is_int = isinstance(v, numbers.Integral) and not isinstance(v, bool)
        ok = is_int if hint is int else (isinstance(v, numbers.Real) and not isinstance(v, bool))
        what = "an integer" if hint is int else "a finite number"
        v2 = (int(v) if hint is int else float(v)) if ok else None
        if not ok or (hint is float and not math.isfinite(v2)) or not _in_range(v2, meta):
            rng = _range_text(meta)
            raise UpdeltaError(f"{opt} {v!r}: must be {what}{' ' + rng if rng else ''}")
        return v2
    if typing.get_origin(hint) is tuple:
        items = (v,) if isinstance(v, str) else v
        try:
            items = tuple(items)
        except TypeError:
            items = (v,)
        for s in items:
            if not isinstance(s, str):
                raise UpdeltaError(f"{opt} {s!r}: expected a string" + (" (a regular expression)"
                                                                         if meta.get("regex") else ""))
            if meta.get("regex"):
                try:
                    re.compile(s)
                except re.error as e:
                    raise UpdeltaError(f"{opt} {s!r}: not a valid regular expression ({e})") from None
        return items
    return v


def check_fields(obj: Any) -> None:
    """Check (and coerce, on a frozen dataclass too) every field of `obj` from its type and metadata."""
    hints = _hints(type(obj))
    for f in fields(obj):
        v = getattr(obj, f.name)
        v2 = _checked(f.name, hints[f.name], f.metadata, v)
        if v2 is not v:
            object.__setattr__(obj, f.name, v2)


_HINTS: dict[type, dict] = {}


def _hints(cls: type) -> dict:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]
