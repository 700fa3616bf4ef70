"""A minimal safetensors reader that streams row blocks into reused buffers.

The header is validated by `safetensors_header` (as strict as the safetensors library; see
docs/formats.md), so every byte range read here lies inside the file and belongs to one tensor.

We read with `os.preadv` into caller-owned buffers instead of memory-mapping the
file: mapped pages count in the process's RSS while the file is open (a 1024-row
`get_slice` scan of a 151936 x 896 bf16 embedding added 264 MB), while page-cache
pages read with pread do not. Memory therefore stays flat whatever the model size.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from updelta.errors import CheckpointError
from updelta.io.regular import Descriptor, open_regular
from updelta.io.safetensors_header import DTYPE_BITS, read_header

# safetensors dtype -> (torch-style name, numpy dtype of the raw storage or None when never read).
# Every dtype the safetensors library knows is listed (safetensors_header.DTYPE_BITS); which of them are measured
# is decided in `checkpoint` (floats are, quantized ones are refused by name, integers are listed as non-float).
DTYPES: dict[str, tuple[str, np.dtype | None]] = {
    "F64": ("float64", np.dtype("<f8")),
    "F32": ("float32", np.dtype("<f4")),
    "F16": ("float16", np.dtype("<f2")),
    "BF16": ("bfloat16", np.dtype("<u2")),  # numpy has no bf16: raw bits, widened later
    "I64": ("int64", np.dtype("<i8")),
    "I32": ("int32", np.dtype("<i4")),
    "I16": ("int16", np.dtype("<i2")),
    "I8": ("int8", np.dtype("i1")),
    "U64": ("uint64", np.dtype("<u8")),
    "U32": ("uint32", np.dtype("<u4")),
    "U16": ("uint16", np.dtype("<u2")),
    "U8": ("uint8", np.dtype("u1")),
    "BOOL": ("bool", np.dtype("?")),
    "C64": ("complex64", np.dtype("<c8")),
    "F8_E4M3": ("float8_e4m3fn", np.dtype("u1")),
    "F8_E5M2": ("float8_e5m2", np.dtype("u1")),
    "F8_E8M0": ("float8_e8m0fnu", np.dtype("u1")),
    "F8_E4M3FNUZ": ("float8_e4m3fnuz", np.dtype("u1")),
    "F8_E5M2FNUZ": ("float8_e5m2fnuz", np.dtype("u1")),
    "F4": ("float4_e2m1", None),
    "F6_E2M3": ("float6_e2m3", None),
    "F6_E3M2": ("float6_e3m2", None),
}
assert set(DTYPES) == set(DTYPE_BITS)


def pread_elements(fd: int, offset: int, raw: np.dtype, start: int, count: int, out: np.ndarray | None,
                   path, name: str) -> np.ndarray:
    """Elements [start, start+count) of the tensor whose data begins at byte `offset` of open file `fd`, as raw
    storage of dtype `raw`, read with pread into `out` (a reusable uint8 buffer; a new one when too small)."""
    nbytes = count * raw.itemsize
    if out is None or out.nbytes < nbytes:
        out = np.empty(nbytes, dtype=np.uint8)
    view = memoryview(out)[:nbytes]
    pos = offset + start * raw.itemsize
    got = 0
    while got < nbytes:
        k = os.preadv(fd, [view[got:]], pos + got)
        if k <= 0:
            raise CheckpointError(f"{path}: tensor {name}: short read at byte {pos + got} (truncated or changed "
                                  f"while being read); re-save or re-download it")
        got += k
    return out[:nbytes].view(raw)


class HeaderEntries:
    """Names, dtypes and shapes of a validated safetensors header, as `entries` (name -> (dtype, shape, offset));
    shared by the local and the remote file."""

    entries: dict

    def names(self) -> list[str]:
        return list(self.entries)

    def dtype_name(self, name: str) -> str:
        return DTYPES[self.entries[name][0]][0]

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name][1]


class SafetensorsFile(HeaderEntries, Descriptor):
    """The header of one .safetensors file, validated (`safetensors_header`), and block reads from it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd = -1
        self._fd, self.size = open_regular(self.path, "the weights file itself")
        try:
            header = read_header(self._fd, self.size, self.path)
        except BaseException:
            self.close()
            raise
        self.metadata = header.metadata
        self.data_start = header.data_start
        self.entries = {name: (e.dtype, e.shape, e.begin) for name, e in header.entries.items()}


    def raw_dtype(self, name: str) -> np.dtype:
        raw = DTYPES[self.entries[name][0]][1]
        if raw is None:
            raise CheckpointError(f"{self.path}: tensor {name} is {self.entries[name][0]}, which updelta does not read")
        return raw

    def read(self, name: str, start: int, count: int, out: np.ndarray | None = None) -> np.ndarray:
        """Elements [start, start+count) of the flattened tensor, as raw storage (bf16 -> uint16).

        `out` is a reusable uint8 buffer; the result is a view into it (or a new array).
        """
        _, _, offset = self.entries[name]
        return pread_elements(self._fd, offset, self.raw_dtype(name), start, count, out, self.path, name)
