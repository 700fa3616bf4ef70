"""Validate a GGUF header (llama.cpp's weight format) from bytes alone, before any count or offset is trusted.

The format (docs/formats.md, "GGUF"), all little-endian: magic `GGUF`, uint32 version (2 or 3), uint64 tensor
count, uint64 key/value count; the key/value pairs (key: uint64 length + UTF-8 bytes; uint32 value type; the
value: a fixed-size number, a string, or an array of one element type with a uint64 count); the tensor infos
(name string, uint32 n_dims, n_dims uint64 extents `ne` with ne[0] the fastest-varying, uint32 ggml type, uint64
offset into the data section); then the data section, which begins at the end of the infos rounded up to the
alignment (`general.alignment`, default 32).

`read_header(fd, file_size, path)` checks, with pread into a bounded buffer (the file is never mapped):

- the magic and a version of 2 or 3 (1 and big-endian files refused by name);
- the tensor and key/value counts against the bytes left (each tensor info takes >= 24 bytes, each pair >= 13),
  every string length and array count against the bytes left before reading it, strings <= 64 MiB, no nested
  arrays, known value types, keys and tensor names valid UTF-8 and unique;
- `general.alignment`, when present, of type uint32 and a power of two;
- each tensor: 1 to 4 dimensions, a ggml type id the `gguf` package knows, ne[0] a whole number of the type's
  blocks, element and byte counts below 2^63, its offset a multiple of the alignment, equal to the previous
  tensor's end rounded up to the alignment (as llama.cpp's gguf.cpp requires: no overlap, no hole, file order),
  and its bytes inside the file (trailing bytes after the last tensor are allowed, as llama.cpp allows them).

Anything else raises a `CheckpointError` naming the file, what is wrong, and the fix. Which types are then
de-quantized is `gguf_file`'s business (a type the installed `gguf` cannot de-quantize is refused there).
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from updelta.errors import CheckpointError

MAGIC = b"GGUF"
VERSIONS = (2, 3)
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_STRING = 64 << 20
DEFAULT_ALIGNMENT = 32
I63 = 1 << 63
KEEP_ARRAY = 4096  # numeric arrays up to this many elements are kept in `metadata`; longer ones as (type, count)
STRING, ARRAY = 8, 9
# value type -> struct format of one fixed-size value
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
TYPE_NAMES = {0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32", 6: "float32", 7: "bool",
              8: "string", 9: "array", 10: "uint64", 11: "int64", 12: "float64"}


def ggml_types() -> dict[int, tuple[str, int, int]]:
    """ggml type id -> (name, elements per block, bytes per block), from the `gguf` package's own table."""
    try:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType  # gguf: imported when a GGUF file is read
    except ImportError:
        raise CheckpointError("reading .gguf files needs the gguf package: pip install gguf "
                              "(or pip install updelta, which depends on it)") from None
    return {int(t): (t.name, *GGML_QUANT_SIZES[t]) for t in GGMLQuantizationType if t in GGML_QUANT_SIZES}


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One tensor of a validated header: name, ggml type, shape (numpy order: reversed `ne`), absolute bytes."""

    name: str
    type_id: int
    type_name: str
    shape: tuple[int, ...]  # numpy / PyTorch order: (ne[n-1], ..., ne[0])
    begin: int  # absolute offset of the first byte in the file
    nbytes: int
    block: int  # elements per block (1 for F32/F16/BF16/...)
    block_bytes: int


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    metadata: dict  # key -> value (numbers, strings, short numeric lists, or ("array", type name, count))
    tensors: dict[str, GGUFTensorInfo]  # in file order
    alignment: int
    data_start: int


def _bad(path, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: truncated or corrupt GGUF file ({what}); re-download it or re-convert it with "
                           f"llama.cpp's convert_hf_to_gguf.py")


class _Cursor:
    """Sequential reads from an open file through a bounded buffer, every length checked against the bytes left."""

    CHUNK = 1 << 20

    def __init__(self, fd: int, size: int, path):
        self.fd, self.size, self.path = fd, size, path
        self.pos, self.buf, self.buf_start = 0, b"", 0

    def left(self) -> int:
        return self.size - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.left():
            raise _bad(self.path, f"{what} needs {n} bytes at byte {self.pos}, the file has {self.size}")
        off = self.pos - self.buf_start
        if off < 0 or off + n > len(self.buf):
            want = min(max(n, self.CHUNK), self.left())
            parts, got = [], 0
            while got < want:
                chunk = os.pread(self.fd, want - got, self.pos + got)
                if not chunk:
                    raise _bad(self.path, f"short read at byte {self.pos + got} (changed while being read)")
                parts.append(chunk)
                got += len(chunk)
            self.buf, self.buf_start, off = b"".join(parts), self.pos, 0
        out = self.buf[off:off + n]
        self.pos += n
        return out

    def skip(self, n: int, what: str) -> None:
        if n > self.left():
            raise _bad(self.path, f"{what} needs {n} bytes at byte {self.pos}, the file has {self.size}")
        self.pos += n

    def unpack(self, fmt: str, what: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str, keep: bool = True) -> bytes | None:
        n = self.unpack("<Q", f"{what} length")
        if n > MAX_STRING:
            raise _bad(self.path, f"{what} claims {n} bytes (limit {MAX_STRING})")
        if not keep:
            self.skip(n, what)
            return None
        return self.take(n, what)

    def text(self, what: str) -> str:
        raw = self.string(what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad(self.path, f"{what} is not UTF-8") from None


def _value(c: _Cursor, vtype: int, key: str):
    if vtype in SCALARS:
        return c.unpack(SCALARS[vtype], f"value of {key!r}")
    if vtype == STRING:
        raw = c.string(f"string value of {key!r}")
        return raw.decode("utf-8", errors="replace")
    if vtype != ARRAY:
        raise _bad(c.path, f"key {key!r} has unknown value type {vtype}")
    etype = c.unpack("<I", f"array type of {key!r}")
    count = c.unpack("<Q", f"array length of {key!r}")
    if etype == ARRAY:
        raise _bad(c.path, f"key {key!r} is an array of arrays, which GGUF readers do not support")
    if etype == STRING:
        if count * 8 > c.left():
            raise _bad(c.path, f"key {key!r} claims {count} strings, more than the {c.left()} bytes left hold")
        for i in range(count):
            c.string(f"string {i} of {key!r}", keep=False)
        return ("array", "string", count)
    if etype not in SCALARS:
        raise _bad(c.path, f"key {key!r} is an array of unknown value type {etype}")
    size = struct.calcsize(SCALARS[etype])
    if count * size > c.left():
        raise _bad(c.path, f"key {key!r} claims {count} elements, more than the {c.left()} bytes left hold")
    if count <= KEEP_ARRAY:
        raw = c.take(count * size, f"array {key!r}")
        return list(struct.unpack(f"<{count}{SCALARS[etype][1]}", raw))
    c.skip(count * size, f"array {key!r}")
    return ("array", TYPE_NAMES[etype], count)


def read_header(fd: int, file_size: int, path) -> GGUFHeader:
    """Read and validate the header of the open GGUF file `fd` of `file_size` bytes (pread only)."""
    c = _Cursor(fd, file_size, path)
    if file_size < 24:
        raise _bad(path, f"only {file_size} bytes, no header")
    magic = c.take(4, "magic")
    if magic != MAGIC:
        raise CheckpointError(f"{path}: not a GGUF file (starts with {magic!r}, not b'GGUF'); pass a .gguf written "
                              f"by llama.cpp or gguf-py")
    version = c.unpack("<I", "version")
    if version not in VERSIONS:
        what = ("GGUF version 1 (2023), which llama.cpp no longer reads; re-convert it" if version == 1 else
                "a big-endian GGUF file; convert a little-endian copy (gguf-py's gguf_convert_endian.py)"
                if version in (2 << 24, 3 << 24) else f"unknown GGUF version {version}; expected 2 or 3")
        raise CheckpointError(f"{path}: {what}")
    n_tensors = c.unpack("<Q", "tensor count")
    n_kv = c.unpack("<Q", "key/value count")
    if n_kv * 13 + n_tensors * 24 > c.left():
        raise _bad(path, f"header claims {n_tensors} tensors and {n_kv} keys, more than the {c.left()} bytes "
                         f"left can hold")
    metadata: dict = {}
    vtypes: dict[str, int] = {}
    for i in range(n_kv):
        key = c.text(f"key {i}")
        if key in metadata:
            raise _bad(path, f"key {key!r} appears twice")
        vtype = vtypes[key] = c.unpack("<I", f"value type of {key!r}")
        metadata[key] = _value(c, vtype, key)
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if "general.alignment" in metadata:  # a uint32 power of two (llama.cpp and gguf-py read it as uint32 only)
        if vtypes["general.alignment"] != 4 or alignment <= 0 or alignment & (alignment - 1):
            raise _bad(path, f"general.alignment {alignment!r} ({TYPE_NAMES.get(vtypes['general.alignment'])}) is "
                             f"not a uint32 power of two")
    types = ggml_types()
    raw_infos = []
    names: set[str] = set()
    for i in range(n_tensors):
        name = c.text(f"name of tensor {i}")
        if name in names:
            raise _bad(path, f"tensor {name!r} appears twice")
        names.add(name)
        n_dims = c.unpack("<I", f"dimension count of {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise _bad(path, f"tensor {name!r} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
        ne = struct.unpack(f"<{n_dims}Q", c.take(8 * n_dims, f"dimensions of {name!r}"))
        type_id = c.unpack("<I", f"type of {name!r}")
        offset = c.unpack("<Q", f"offset of {name!r}")
        raw_infos.append((name, ne, type_id, offset))
    data_start = -(-c.pos // alignment) * alignment
    if data_start > file_size:
        raise _bad(path, f"the data section would begin at byte {data_start}, past the end ({file_size})")
    tensors: dict[str, GGUFTensorInfo] = {}
    expect = 0
    for name, ne, type_id, offset in raw_infos:
        if type_id not in types:
            raise _bad(path, f"tensor {name!r} has unknown ggml type id {type_id}")
        tname, block, block_bytes = types[type_id]
        numel = 1
        for d in ne:
            numel *= d
            if d >= I63 or numel >= I63:
                raise _bad(path, f"tensor {name!r} extents {list(ne)} overflow")
        if ne[0] % block:
            raise _bad(path, f"tensor {name!r}: row of {ne[0]} elements is not a whole number of {tname} blocks "
                             f"of {block}")
        nbytes = numel // block * block_bytes
        if offset % alignment:
            raise _bad(path, f"tensor {name!r} offset {offset} is not a multiple of the alignment {alignment}")
        if offset != expect:
            what = "overlaps the previous tensor" if offset < expect else "leaves a hole before it"
            raise _bad(path, f"tensor {name!r} at data offset {offset} {what} (expected {expect})")
        if data_start + offset + nbytes > file_size:
            raise _bad(path, f"tensor {name!r} ({tname} {list(ne)}, {nbytes} bytes at byte {data_start + offset}) "
                             f"runs past the end of the file ({file_size} bytes)")
        tensors[name] = GGUFTensorInfo(name, type_id, tname, tuple(reversed(ne)), data_start + offset, nbytes, block,
                                       block_bytes)
        expect = offset + -(-nbytes // alignment) * alignment
    return GGUFHeader(version, metadata, tensors, alignment, data_start)
