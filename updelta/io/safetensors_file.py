"""A minimal safetensors reader that streams row blocks into reused buffers.

Format (safetensors 0.x, see docs/formats.md, safetensors): an 8-byte little-endian
header length N, N bytes of JSON ({name: {"dtype", "shape", "data_offsets": [b, e]}},
optional "__metadata__"), then the raw little-endian data; offsets are relative to
the end of the header.

We read with `os.preadv` into caller-owned buffers instead of memory-mapping the
file: mapped pages count in the process's RSS while the file is open (a 1024-row
`get_slice` scan of a 151936 x 896 bf16 embedding added 264 MB), while page-cache
pages read with pread do not. Memory therefore stays flat whatever the model size.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

from ..errors import CheckpointError

# safetensors dtype -> (torch-style name, itemsize, numpy dtype of the raw storage)
DTYPES: dict[str, tuple[str, int, np.dtype]] = {
    "F64": ("float64", 8, np.dtype("<f8")),
    "F32": ("float32", 4, np.dtype("<f4")),
    "F16": ("float16", 2, np.dtype("<f2")),
    "BF16": ("bfloat16", 2, np.dtype("<u2")),  # numpy has no bf16: raw bits, widened later
    "I64": ("int64", 8, np.dtype("<i8")),
    "I32": ("int32", 4, np.dtype("<i4")),
    "I16": ("int16", 2, np.dtype("<i2")),
    "I8": ("int8", 1, np.dtype("i1")),
    "U8": ("uint8", 1, np.dtype("u1")),
    "BOOL": ("bool", 1, np.dtype("?")),
    "F8_E4M3": ("float8_e4m3fn", 1, np.dtype("u1")),
    "F8_E5M2": ("float8_e5m2", 1, np.dtype("u1")),
}
MAX_HEADER = 100 * 1024 * 1024


class SafetensorsFile:
    """The header of one .safetensors file, validated, and block reads from it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd = -1
        try:
            self.size = self.path.stat().st_size
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot open ({e.strerror})") from None
        try:
            self.entries, self.metadata, self.data_start = self._parse_header()
        except BaseException:
            self.close()
            raise

    def _bad(self, what: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: truncated or corrupt safetensors file ({what}); "
                               f"re-save or re-download it")

    def _parse_header(self):
        head = os.pread(self._fd, 8, 0)
        if len(head) < 8:
            raise self._bad(f"only {self.size} bytes, no header")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > self.size:
            raise self._bad(f"header length {n} does not fit in {self.size} bytes")
        raw = os.pread(self._fd, n, 8)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise self._bad("header is not valid JSON") from None
        if not isinstance(header, dict):
            raise self._bad("header is not a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        data_start = 8 + n
        data_len = self.size - data_start
        entries = {}
        for name, e in header.items():
            try:
                dtype, shape, (b, end) = e["dtype"], tuple(int(s) for s in e["shape"]), e["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise self._bad(f"entry {name!r} lacks dtype/shape/data_offsets") from None
            if dtype not in DTYPES:
                raise CheckpointError(f"{self.path}: tensor {name} has unsupported dtype {dtype}")
            numel = int(np.prod(shape)) if shape else 1
            if end - b != numel * DTYPES[dtype][1] or b < 0:
                raise self._bad(f"tensor {name}: {end - b} bytes for shape {list(shape)} {dtype}")
            if end > data_len:
                raise self._bad(f"tensor {name} ends at byte {data_start + end}, file has {self.size}")
            entries[name] = (dtype, shape, data_start + b)
        return entries, metadata, data_start

    def dtype_name(self, name: str) -> str:
        return DTYPES[self.entries[name][0]][0]

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name][1]

    def raw_dtype(self, name: str) -> np.dtype:
        return DTYPES[self.entries[name][0]][2]

    def read(self, name: str, start: int, count: int, out: np.ndarray | None = None) -> np.ndarray:
        """Elements [start, start+count) of the flattened tensor, as raw storage (bf16 -> uint16).

        `out` is a reusable uint8 buffer; the result is a view into it (or a new array).
        """
        dtype, _, offset = self.entries[name]
        raw = DTYPES[dtype][2]
        nbytes = count * raw.itemsize
        if out is None or out.nbytes < nbytes:
            out = np.empty(nbytes, dtype=np.uint8)
        view = memoryview(out)[:nbytes]
        pos = offset + start * raw.itemsize
        got = 0
        while got < nbytes:
            k = os.preadv(self._fd, [view[got:]], pos + got)
            if k <= 0:
                raise self._bad(f"tensor {name}: short read at byte {pos + got}")
            got += k
        return out[:nbytes].view(raw)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
