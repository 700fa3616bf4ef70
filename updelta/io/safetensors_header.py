"""Validate a safetensors header exactly as strictly as the safetensors library (0.8), from bytes alone.

The format (docs/formats.md): an 8-byte little-endian header length N, N bytes of UTF-8 JSON
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}`, then the
data section; offsets are relative to the start of the data section.

`parse_header(raw, file_size, path)` takes the header bytes (without the length prefix) and the
size of the whole file, so the same rules serve local and remote files. A file passes only if:

- N <= 100,000,000 and 8 + N <= file size; the header is UTF-8 JSON (no NaN/Infinity, no lone
  surrogates, no duplicate keys at any level: the library takes the last duplicate silently, we
  refuse), an object, optionally padded with JSON whitespace;
- `__metadata__` is absent, null, or an object of strings to strings;
- every other entry is an object with a known `dtype`, a `shape` of non-negative integers below
  2^64 (not floats, not booleans), and `data_offsets` of exactly two such integers (extra keys
  are ignored, as the library does);
- sorted by offsets, the byte ranges are contiguous from 0, never run backwards, each holds
  exactly numel x bits / 8 bytes (whole bytes), and the last one ends where the file ends:
  no hole, no overlap, no trailing bytes.

Anything else raises a `CheckpointError` naming the file, the tensor and the reason.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from updelta.errors import CheckpointError

MAX_HEADER = 100_000_000  # the library's MAX_HEADER_SIZE
U64 = 1 << 64

# safetensors dtype -> bits per element (the library's Dtype::bitsize)
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
}


@dataclass(frozen=True)
class HeaderEntry:
    """One tensor of a validated header: dtype (safetensors name), shape and absolute byte range in the file."""

    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute offset of the first byte in the file
    end: int


@dataclass(frozen=True)
class Header:
    entries: dict[str, HeaderEntry]
    metadata: dict[str, str]
    data_start: int  # 8 + N


def _bad(path, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: truncated or corrupt safetensors file ({what}); re-save or re-download it")


def _no_duplicates(pairs):
    obj = {}
    for k, v in pairs:
        if k in obj:
            raise _Duplicate(k)
        obj[k] = v
    return obj


class _Duplicate(ValueError):
    pass


def _reject_constant(name):
    raise ValueError(f"{name} is not JSON")


def _is_u64(x) -> bool:
    return type(x) is int and 0 <= x < U64


def _check_strings(x) -> bool:
    """True if every string in `x` (keys too) is valid UTF-8 (json.loads lets lone surrogates through)."""
    stack = [x]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return True


def header_length(prefix: bytes, file_size: int, path) -> int:
    """N from the first 8 bytes, checked against the file size."""
    if len(prefix) < 8:
        raise _bad(path, f"only {file_size} bytes, no header")
    (n,) = struct.unpack("<Q", prefix[:8])
    if n > MAX_HEADER:
        raise _bad(path, f"header length {n} exceeds the 100 MB limit")
    if 8 + n > file_size:
        raise _bad(path, f"header length {n} does not fit in {file_size} bytes")
    return n


def parse_header(raw: bytes, file_size: int, path) -> Header:
    """Validate header bytes `raw` (N bytes after the length prefix) of a file of `file_size` bytes."""
    data_start = 8 + len(raw)
    if data_start > file_size:
        raise _bad(path, f"header length {len(raw)} does not fit in {file_size} bytes")
    try:
        text = raw.decode("utf-8")
        header = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise _bad(path, "header is not UTF-8") from None
    except _Duplicate as e:
        raise _bad(path, f"header names {str(e)!r} twice") from None
    except (ValueError, RecursionError):
        raise _bad(path, "header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _bad(path, "header is not a JSON object")
    if not _check_strings(header):
        raise _bad(path, "header holds an invalid unicode escape")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _bad(path, "__metadata__ is not a map of strings to strings")

    ranges: list[tuple[int, int, str, str, tuple[int, ...]]] = []
    for name, e in header.items():
        if not isinstance(e, dict) or not {"dtype", "shape", "data_offsets"} <= e.keys():
            raise _bad(path, f"tensor {name!r}: entry lacks dtype/shape/data_offsets")
        dtype, shape, offs = e["dtype"], e["shape"], e["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
            raise _bad(path, f"tensor {name!r}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(_is_u64(d) for d in shape):
            raise _bad(path, f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
        if not isinstance(offs, list) or len(offs) != 2 or not all(_is_u64(o) for o in offs):
            raise _bad(path, f"tensor {name!r}: data_offsets {offs!r} is not two non-negative integers")
        ranges.append((offs[0], offs[1], name, dtype, tuple(shape)))

    ranges.sort(key=lambda r: (r[0], r[1]))
    entries: dict[str, HeaderEntry] = {}
    pos = 0
    for begin, end, name, dtype, shape in ranges:
        if begin != pos or end < begin:
            what = "overlaps the previous tensor" if begin < pos else ("leaves a hole before it" if begin > pos
                                                                        else "ends before it begins")
            raise _bad(path, f"tensor {name!r}: bytes [{begin}, {end}) {what}")
        numel = 1
        for d in shape:  # the library multiplies in u64 and fails on the first overflow
            numel *= d
            if numel >= U64:
                raise _bad(path, f"tensor {name!r}: shape {list(shape)} overflows")
        nbits = numel * DTYPE_BITS[dtype]
        if nbits >= U64:
            raise _bad(path, f"tensor {name!r}: shape {list(shape)} overflows")
        if nbits % 8:
            raise _bad(path, f"tensor {name!r}: {numel} x {DTYPE_BITS[dtype]} bits is not a whole number of bytes")
        if end - begin != nbits // 8:
            raise _bad(path, f"tensor {name!r}: {end - begin} bytes for shape {list(shape)} {dtype} "
                             f"(needs {nbits // 8})")
        entries[name] = HeaderEntry(dtype, shape, data_start + begin, data_start + end)
        pos = end
    if data_start + pos != file_size:
        if data_start + pos > file_size:
            raise _bad(path, f"truncated: tensors end at byte {data_start + pos}, the file has {file_size}")
        raise _bad(path, f"{file_size - data_start - pos} bytes after the last tensor")
    return Header(entries, metadata, data_start)


def read_header(fd: int, file_size: int, path: str | os.PathLike | Path) -> Header:
    """Read and validate the header of the open file `fd` (pread: the file position is untouched)."""
    n = header_length(os.pread(fd, 8, 0), file_size, path)
    raw = b""
    while len(raw) < n:
        chunk = os.pread(fd, n - len(raw), 8 + len(raw))
        if not chunk:
            raise _bad(path, f"header length {n} does not fit in the file")
        raw += chunk
    return parse_header(raw, file_size, path)
