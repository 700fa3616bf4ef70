"""Options of the diff/compare engine: one typed, frozen object shared by the API and the CLI.

Every field's help text lives here (field metadata) and nowhere else: the CLI
reads it with `help_for(name)`. Defaults are documented in the help text.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Literal

Spectral = Literal["off", "fast", "full"]
Device = Literal["auto", "cpu", "cuda"]
OnMismatch = Literal["error", "skip"]
Executor = Literal["serial", "threads"]


def _opt(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class DiffOptions:
    """Options of `updelta.diff` / `updelta.compare` and of the `diff`, `compare`, `report` commands."""

    atol: float = _opt(1e-5, "Absolute tolerance of the `atol` sparsity convention: an element is unchanged when "
                             "|W1 - W0| <= atol (Mukherjee et al. 2025 use 1e-5 on bf16).")
    eta: float = _opt(1e-3, "Relative tolerance of the `rtol` sparsity convention (Zhu et al. 2025): unchanged when "
                            "|W1 - W0| <= eta * max(|W0|, |W1|). On bf16 storage 1e-3 equals `exact`.")
    include: tuple[str, ...] = _opt((), "Regular expression; only tensors whose name matches are compared (repeatable).")
    exclude: tuple[str, ...] = _opt((), "Regular expression; tensors whose name matches are skipped (repeatable).")
    device: Device = _opt("auto", "Where to compute: auto (CUDA when available), cpu or cuda.")
    on_shape_mismatch: OnMismatch = _opt("error", "A shape mismatch that is not a vocabulary resize: `error` stops "
                                                  "with the tensor named; `skip` leaves the tensor out and lists it.")
    spectral: Spectral = _opt("fast", "Spectral work on 2-D updates: off, fast (top-k singular values of the update), "
                                      "or full (exact SVDs, subspace angles, intruders).")
    topk: int = _opt(16, "How many top singular values of the update the spectral modes keep.")
    spectral_float64: bool = _opt(False, "Exact (full) spectral work in float64 instead of float32.")
    offprincipal_alpha: float = _opt(0.05, "Off-principal alignment (Zhu et al.): share of elements in the principal "
                                           "mask of W0 (the chance level of the overlap).")
    offprincipal_k: int = _opt(16, "Off-principal alignment: rank of the reconstruction of W0 that defines the mask.")
    histogram: bool = _opt(False, "Count |W1 - W0| per tensor in power-of-two bins (plus exact zeros), for "
                                  "`updelta plot --kind distribution`.")
    executor: Executor = _opt("threads", "How the per-tensor jobs run: `threads` (a pool of `workers` threads in "
                                         "this process) or `serial` (one job at a time in the calling thread). Both "
                                         "run the same plan and give the same numbers.")
    workers: int = _opt(0, "Per-tensor jobs run at once (0 = one per core, at most 4; always 1 on CUDA). Each spectral "
                           "job gets max(1, torch threads // workers) BLAS threads, whatever the executor.")
    block_elems: int = _opt(1 << 18, "Elements per streamed block (memory per worker is a few blocks).")
    progress: bool = _opt(True, "Show a progress bar on stderr.")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["include"] = list(self.include)
        d["exclude"] = list(self.exclude)
        return d

    def replace(self, **changes) -> "DiffOptions":
        return replace(self, **changes)


def help_for(name: str, cls=DiffOptions) -> str:
    """The help text of option `name` (the single source of truth for CLI help)."""
    for f in fields(cls):
        if f.name == name:
            return f.metadata["help"]
    raise KeyError(name)


def default_of(name: str, cls=DiffOptions):
    for f in fields(cls):
        if f.name == name:
            return f.default
    raise KeyError(name)
