"""GGUF tensors as a checkpoint's `TensorRef`s (`io.gguf_file` reads them; docs/inputs.md, GGUF)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from updelta.io.checkpoint import TensorRef
from updelta.io.gguf_file import GGUFFile
from updelta.io.locations import TensorLocation


@dataclass(frozen=True)
class GGUFRef(TensorRef):
    """A tensor of a GGUF file: `name` in the checkpoint (the GGUF name, or the Hugging Face name it was paired
    under), `stored_name` in the file, values float32 (stored, or in Hugging Face's convention with `hf`)."""

    stored_name: str = ""
    gguf_type: str = ""
    hf: bool = False

    @property
    def stored_dtype(self) -> str:
        return self.gguf_type

    def read(self, start: int, count: int, out: np.ndarray | None = None) -> np.ndarray:
        return self.file.read(self.stored_name, start, count, out, hf=self.hf)

    @property
    def location(self):
        return TensorLocation(str(self.file.path), "gguf-hf" if self.hf else "gguf", self.stored_name, self.dtype,
                              tuple(self.shape), stored=self.gguf_type)


def gguf_refs(tensors: dict) -> dict:
    """The tensors of a checkpoint with every GGUF tensor as a `GGUFRef` (others unchanged)."""
    out = {}
    for n, t in tensors.items():
        f = t.file
        out[n] = GGUFRef(n, t.dtype, t.shape, f, n, f.gguf_type(n), False) if isinstance(f, GGUFFile) else t
    return out
