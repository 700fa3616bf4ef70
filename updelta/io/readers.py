"""Block readers opened from plain-data locations (`io.locations`), with the per-process cache of open files.

`open_reader(location)` returns a `BlockReader`. Open files are cached per process, keyed by path:
- safetensors: one read-only descriptor per file; a block is a plain `pread` of its byte range at
  the absolute offset. The header is not parsed again (`io.checkpoint` validated it when the
  location was made).
- torch `.bin`/`.pt`: the `TorchFile`, loaded once with `weights_only=True` (memory-mapped when
  zip-format); a `TorchFile` the caller already has open can be lent to the cache (`reader_scope`).
- a location with `dequant` (an FP8 weight and its scales, `io.quantized`): float32 values, the
  stored reader's codes times the scale of each element's block (docs/quantized.md).
- other kinds (`OPENERS`: FSDP distributed checkpoints, remote files): a file object that says its
  `location_format` and `location_path`, reopened from them once per process (or lent, like torch
  files), read through its own `read`.

The cache is safe to use from several threads (pread has no shared file position) and is dropped
in a forked child. `reader_scope()` closes what the cache opened when the outermost scope ends;
outside any scope, files stay open until `close_readers()`.
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from dataclasses import replace
from typing import Callable, Iterable, Iterator, Protocol

import numpy as np

from updelta.errors import CheckpointError
from updelta.io.dequant import DequantReader
from updelta.io.framework import DCPFile
from updelta.io.gguf_file import GGUFFile
from updelta.io.locations import RAW_DTYPES, TensorLocation
from updelta.io.remote import RemoteSafetensorsFile
from updelta.io.safetensors_file import SafetensorsFile, pread_elements
from updelta.io.torch_file import TorchFile

# location_format -> opener of a file object from its location_path (objects with their own `read`)
OPENERS: dict[str, Callable[[str], object]] = {"dcp": DCPFile, "remote": RemoteSafetensorsFile, "gguf": GGUFFile}


class BlockReader(Protocol):
    def read(self, start: int, count: int, out: np.ndarray | None = None) -> np.ndarray:
        """Elements [start, start+count) of the flattened tensor, raw storage (bf16 as uint16); a view
        into `out` (a reusable uint8 buffer) when it is large enough."""


def location_of(ref) -> TensorLocation:
    """The location of an `io.checkpoint.TensorRef` (what `TensorRef.location` returns)."""
    f = ref.file
    if isinstance(f, SafetensorsFile):
        offset = int(f.entries[ref.name][2])  # (dtype, shape, absolute offset of the data)
        return TensorLocation(str(f.path), "safetensors", ref.name, ref.dtype, tuple(ref.shape), offset)
    if isinstance(f, TorchFile):
        return TensorLocation(str(f.path), "torch", ref.name, ref.dtype, tuple(ref.shape))
    if getattr(f, "location_format", None) in OPENERS:
        return TensorLocation(f.location_path, f.location_format, ref.name, ref.dtype, tuple(ref.shape))
    raise TypeError(f"location_of: unknown file type {type(f).__name__}")


class _SafetensorsReader:
    def __init__(self, fd: int, loc: TensorLocation):
        self.fd, self.loc, self.raw = fd, loc, RAW_DTYPES[loc.dtype]

    def read(self, start: int, count: int, out: np.ndarray | None = None) -> np.ndarray:
        return pread_elements(self.fd, self.loc.offset, self.raw, self.loc.start + start, count, out, self.loc.path,
                              self.loc.name)


class _TorchReader:
    def __init__(self, tf: TorchFile, loc: TensorLocation):
        self.tf, self.name, self.start = tf, loc.name, loc.start

    def read(self, start: int, count: int, out: np.ndarray | None = None) -> np.ndarray:
        return self.tf.read(self.name, self.start + start, count, out)


class _GGUFReader:
    """Float32 values of a GGUF tensor (io.gguf_file): stored, or in Hugging Face's convention ("gguf-hf")."""

    def __init__(self, f, loc: TensorLocation):
        self.f, self.name, self.start, self.hf = f, loc.name, loc.start, loc.format == "gguf-hf"

    def read(self, start: int, count: int, out: np.ndarray | None = None) -> np.ndarray:
        return self.f.read(self.name, self.start + start, count, out, hf=self.hf)


class _View:
    """Elements [start, start + count) of a view that begins `offset` elements into the reader's tensor."""

    def __init__(self, reader, offset: int):
        self.reader, self.offset = reader, offset

    def read(self, start: int, count: int, out: np.ndarray | None = None) -> np.ndarray:
        return self.reader.read(self.offset + start, count, out)


class _OpenFiles:
    """Per-process cache of open files by path (descriptors for safetensors, TorchFile for torch)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.fds: dict[str, int] = {}
        self.torch: dict[str, TorchFile] = {}
        self.lent: dict[str, list[TorchFile]] = {}  # borrowed from the caller: never closed here
        self.depth = 0

    def fd(self, path: str) -> int:
        fd = self.fds.get(path)
        if fd is None:
            with self.lock:
                fd = self.fds.get(path)
                if fd is None:
                    try:
                        fd = self.fds[path] = os.open(path, os.O_RDONLY)
                    except OSError as e:
                        raise CheckpointError(f"{path}: cannot open ({e.strerror})") from None
        return fd

    def torch_file(self, path: str, opener: Callable[[str], object] = TorchFile):
        lent = self.lent.get(path)
        if lent:
            return lent[-1]
        tf = self.torch.get(path)
        if tf is None:
            with self.lock:  # one load per file even when several threads ask at once
                tf = self.torch.get(path)
                if tf is None:
                    tf = self.torch[path] = opener(path)
        return tf

    def close(self) -> None:
        with self.lock:
            for fd in self.fds.values():
                try:
                    os.close(fd)
                except OSError:
                    pass
            for tf in self.torch.values():
                tf.close()
            self.fds, self.torch = {}, {}

    def forget(self) -> None:
        """In a forked child: drop the parent's entries (its descriptors are closed by the child's exit)."""
        self.lock = threading.Lock()
        self.fds, self.torch, self.lent, self.depth = {}, {}, {}, 0


_FILES = _OpenFiles()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_FILES.forget)


def open_reader(loc: TensorLocation) -> BlockReader:
    """A block reader of `loc`, from this process's cache of open files."""
    if loc.dequant is not None:  # float32 values of a quantized weight, de-quantized block by block
        whole = DequantReader(open_reader(replace(loc, dtype=loc.dequant.dtype, dequant=None, start=0)),
                              open_reader(loc.dequant.scale), loc.dequant)  # scales are indexed from element 0
        return _View(whole, loc.start) if loc.start else whole
    if loc.format == "safetensors":
        return _SafetensorsReader(_FILES.fd(loc.path), loc)
    if loc.format == "torch":
        return _TorchReader(_FILES.torch_file(loc.path), loc)
    if loc.format in ("gguf", "gguf-hf"):  # de-quantized float32; "gguf-hf": in Hugging Face's convention
        return _GGUFReader(_FILES.torch_file(loc.path, OPENERS["gguf"]), loc)
    if loc.format in OPENERS:
        return _TorchReader(_FILES.torch_file(loc.path, OPENERS[loc.format]), loc)
    raise ValueError(f"open_reader: unknown file format {loc.format!r}")


def close_readers() -> None:
    """Close every file this process's cache opened (lent files stay with their owner)."""
    _FILES.close()


def _key(f) -> str:
    return getattr(f, "location_path", None) or str(f.path)


@contextmanager
def reader_scope(lend: Iterable[object] = ()) -> Iterator[None]:
    """Files opened by readers inside the outermost scope are closed when it ends.

    `lend`: already-open file objects (`TorchFile`s; others are ignored) that readers of the same path
    use instead of loading the file again, for the duration of the scope; their owner closes them."""
    lent = [f for f in lend if isinstance(f, TorchFile) or getattr(f, "location_format", None) in OPENERS]
    with _FILES.lock:
        _FILES.depth += 1
        for f in lent:
            _FILES.lent.setdefault(_key(f), []).append(f)
    try:
        yield
    finally:
        with _FILES.lock:
            for f in lent:
                stack = _FILES.lent.get(_key(f), [])
                if f in stack:
                    stack.remove(f)
                if not stack:
                    _FILES.lent.pop(_key(f), None)
            _FILES.depth -= 1
            last = _FILES.depth == 0
        if last:
            _FILES.close()
