"""Where a tensor's bytes are, as plain picklable data (no open files, no imports of readers).

A `TensorLocation` names the file, its format, the stored tensor name, dtype, shape and, for
safetensors, the absolute byte offset of element 0. `start` makes it a view: elements
[start, start + numel) of the stored tensor, with `shape` the view's (one expert of a stacked
expert tensor, docs/experts.md); readers add it to every read. It holds no open file, so a job
that carries locations can go to another thread, process or machine that sees the same paths.
`Dequant` says how float32 values are made from a quantized location (`io.quantized`), and
`FactoredLocation` where an adapter's factors are (docs/adapters.md). `io.readers.open_reader`
opens any of them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from updelta.io.safetensors_file import DTYPES

FileFormat = Literal["safetensors", "torch", "dcp", "remote", "gguf", "gguf-hf"]
# torch-style dtype name -> numpy dtype of the raw storage (bf16 as uint16 bits, fp8 as uint8)
RAW_DTYPES: dict[str, np.dtype] = {name: raw for name, raw in DTYPES.values() if raw is not None}


@dataclass(frozen=True)
class TensorLocation:
    """One stored tensor, as plain data: enough to read it again from any process."""

    path: str
    format: FileFormat
    name: str  # the name stored in the file
    dtype: str  # torch name without prefix: "bfloat16"
    shape: tuple[int, ...]
    offset: int = -1  # safetensors: absolute byte offset of element 0 in the file; -1 for torch files
    dequant: "Dequant | None" = None  # a quantized weight read as float32 values (`io.quantized`)
    start: int = 0  # element offset of this view into the stored tensor (0: the whole tensor)
    stored: str = ""  # the stored type when `dtype` is what reads decode to (GGUF: "Q4_K"; io.gguf_file)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        return RAW_DTYPES[self.dtype].itemsize


@dataclass(frozen=True)
class Dequant:
    """How the float32 values of a location are made from its stored quantized elements (`io.quantized`):
    element (i, j) of each stored [out, in] matrix is `stored * scale[i // block[0], j // block[1]]`."""

    dtype: str  # the stored dtype: "float8_e4m3fn"
    shape: tuple[int, ...]  # the stored shape ([..., out, in])
    scale: TensorLocation  # the scale tensor ([..., ceil(out / block[0]), ceil(in / block[1])])
    block: tuple[int, int]


@dataclass(frozen=True)
class FactoredLocation:
    """Where a factored update's pieces are, as picklable plain data (docs/adapters.md).

    Stored D = scale * L @ R with L [rows, r], R [r, cols] in the base's stored orientation: L = B, R = A, or, when
    `transposed` (fan_in_fan_out, embedding LoRA), L = A^T, R = B^T. kind "bias": D = scale * b (a = None).
    `magnitude` (DoRA): W1 = m * (W0 + D) / ||W0 + D||, the norm over each output row (stored columns when
    `transposed`)."""

    kind: str  # linear | embedding | bias | zero (untouched: b is the base tensor itself, D = 0)
    b: TensorLocation
    a: TensorLocation | None
    scale: float
    transposed: bool
    magnitude: TensorLocation | None
    shape: tuple[int, ...]  # the base tensor's stored shape
    dtype: str  # the factors' storage dtype

    @property
    def stored(self) -> str:
        """No stored type beside `dtype` (cf. `TensorLocation.stored`)."""
        return ""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        return 0  # nothing is read element by element

    @property
    def rank(self) -> int:
        return self.a.shape[0] if self.a is not None else 1

    @property
    def dora(self) -> bool:
        return self.magnitude is not None


def is_factored(loc) -> bool:
    return isinstance(loc, FactoredLocation)


