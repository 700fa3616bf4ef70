"""The input seam: which files a checkpoint path stands for (format resolvers) and how each file is read.

Two registries, each in one place:

- `FILE_READERS`: weight-file suffix -> reader class. A reader implements `TensorFile` (below): the names,
  dtypes and shapes of the tensors in one file, and block reads of their raw storage.
- `RESOLVERS`: ordered functions `path -> Layout | None`. The first that recognises a path says which weight
  files make up the checkpoint, in which format, and (for a sharded checkpoint) the index that maps tensors to
  shards. Today: sharded safetensors, a single model.safetensors, sharded .bin, pytorch_model.bin, a folder of
  .safetensors files, a folder holding one .bin/.pt, and a single weights file. Hub ids are turned into
  local folders before (`hub.locate`, docs/inputs.md).

A resolver only looks at names and JSON; opening and validating the weight files is `open_layout`'s job.
See docs/formats.md for the layouts and the validation rules.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from updelta.errors import CheckpointError
from updelta.io.framework import DCPFile, dcp_folder, refuse_framework
from updelta.io.gguf_file import GGUFFile, folder_files, split_files
from updelta.io.jsonfiles import read_index
from updelta.io.safetensors_file import SafetensorsFile
from updelta.io.torch_file import TorchFile

TORCH_SUFFIXES = (".bin", ".pt", ".pth")


class TensorFile(Protocol):
    """One weight file: its tensors' names, storage dtypes and shapes, and block reads (raw storage)."""

    path: Path
    size: int

    def names(self) -> list[str]: ...

    def dtype_name(self, name: str) -> str: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def read(self, name: str, start: int, count: int, out: np.ndarray | None = None) -> np.ndarray: ...

    def close(self) -> None: ...


class FileSet:
    """Something made of open weight files (`files`): closed by `close()` or at the end of a with-block."""

    files: list

    def close(self) -> None:
        for f in self.files:
            f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _gguf_file(path: Path) -> TensorFile:
    return GGUFFile(path)


FILE_READERS: dict[str, Callable[[Path], TensorFile]] = {
    ".safetensors": SafetensorsFile,
    ".gguf": _gguf_file,
    **{s: TorchFile for s in TORCH_SUFFIXES},
    ".metadata": DCPFile,  # a torch.distributed.checkpoint folder, opened by its .metadata (io.framework)
}


@dataclass(frozen=True)
class Layout:
    """What a checkpoint path stands for: its format, weight files and (when sharded) its index."""

    format: str  # safetensors | safetensors-sharded | bin | bin-sharded | dcp | gguf
    files: tuple[Path, ...]
    index: Path | None = None  # the shard index whose weight_map names the tensors
    weight_map: dict[str, str] | None = None  # tensor -> shard file name, from the index


Resolver = Callable[[Path], "Layout | None"]
RESOLVERS: list[tuple[str, Resolver]] = []


def resolver(name: str) -> Callable[[Resolver], Resolver]:
    """Register a resolver (tried in registration order)."""
    def add(fn: Resolver) -> Resolver:
        RESOLVERS.append((name, fn))
        return fn
    return add


def _sharded(fmt: str, index: Path) -> Layout:
    wm = read_index(index)
    return Layout(fmt, tuple(index.parent / s for s in sorted(set(wm.values()))), index, wm)


@resolver("safetensors-sharded")
def _st_sharded(p: Path) -> Layout | None:
    idx = p / "model.safetensors.index.json"
    return _sharded("safetensors-sharded", idx) if p.is_dir() and idx.exists() else None


@resolver("safetensors")
def _st_single(p: Path) -> Layout | None:
    f = p / "model.safetensors"
    return Layout("safetensors", (f,)) if p.is_dir() and f.exists() else None


@resolver("bin-sharded")
def _bin_sharded(p: Path) -> Layout | None:
    idx = p / "pytorch_model.bin.index.json"
    return _sharded("bin-sharded", idx) if p.is_dir() and idx.exists() else None


@resolver("bin")
def _bin_single(p: Path) -> Layout | None:
    f = p / "pytorch_model.bin"
    return Layout("bin", (f,)) if p.is_dir() and f.exists() else None


@resolver("safetensors-folder")
def _st_folder(p: Path) -> Layout | None:
    if not p.is_dir():
        return None
    st = tuple(sorted(q for q in p.glob("*.safetensors") if q.is_file()))
    if not st:
        return None
    return Layout("safetensors" if len(st) == 1 else "safetensors-sharded", st)


@resolver("framework")
def _framework(p: Path) -> Layout | None:
    """FSDP distributed checkpoints are read; DeepSpeed ZeRO and verl shards are refused with their converter."""
    refuse_framework(p)
    d = dcp_folder(p)
    return Layout("dcp", (d / ".metadata",)) if d is not None else None


@resolver("torch-folder")
def _torch_folder(p: Path) -> Layout | None:
    if not p.is_dir():
        return None
    tf = sorted(q for q in p.iterdir() if q.suffix in TORCH_SUFFIXES and q.is_file())
    return Layout("bin", (tf[0],)) if len(tf) == 1 else None


@resolver("gguf")
def _gguf(p: Path) -> Layout | None:
    """A .gguf file, any file of a split set (`NAME-0000k-of-0000N.gguf`: the whole set), or a folder holding one
    GGUF model and no other weights (io.gguf_file, docs/inputs.md)."""
    if p.is_dir():
        files = folder_files(p)
    elif p.suffix == ".gguf" and p.is_file():
        files = split_files(p) or (p,)
    elif p.suffix not in FILE_READERS and _gguf_magic(p):  # an Ollama blob (sha256-...): a GGUF without suffix
        files = (p,)
    else:
        return None
    return Layout("gguf", files) if files else None


@resolver("file")
def _single_file(p: Path) -> Layout | None:
    if p.is_dir():
        return None
    if not p.is_file():
        raise CheckpointError(f"{p}: not a regular file or folder; pass a checkpoint folder or weights file")
    if p.suffix not in FILE_READERS:
        raise CheckpointError(f"{p}: unknown weight file type; expected .safetensors, .gguf, .bin, .pt or .pth")
    return Layout("safetensors" if p.suffix == ".safetensors" else "bin", (p,))


def is_adapter(path: str | Path) -> bool:
    """A PEFT adapter folder (adapter_config.json beside the factors), not a full checkpoint."""
    return (Path(path) / "adapter_config.json").is_file()


def resolve(p: Path) -> Layout | None:
    """The layout of the first resolver that recognises `p`, or None."""
    for _, fn in RESOLVERS:
        layout = fn(p)
        if layout is not None:
            return layout
    return None


def _gguf_magic(p: Path) -> bool:
    """A regular file that starts with GGUF's magic (never opens a FIFO or a device)."""
    if not p.is_file():
        return False
    try:
        with open(p, "rb") as fh:
            return fh.read(4) == b"GGUF"
    except OSError:
        return False


def open_file(path: Path) -> TensorFile:
    reader = FILE_READERS.get(path.suffix or path.name)
    if reader is None and path.suffix not in FILE_READERS and _gguf_magic(path):
        reader = _gguf_file
    if reader is None:
        raise CheckpointError(f"{path}: unknown weight file type; expected .safetensors, .gguf, .bin, .pt or .pth")
    return reader(path)


def open_files(layout: Layout) -> list[TensorFile]:
    """Open (and validate) every weight file of `layout`; on any failure none stays open."""
    files: list[TensorFile] = []
    try:
        for f in layout.files:
            if layout.index is not None:
                if not f.exists():
                    raise CheckpointError(f"{layout.index}: names shard {f.name}, which is missing; copy it beside "
                                          f"the index")
                if not f.is_file():  # follows symlinks: a Hugging Face cache snapshot links into ../../blobs/
                    raise CheckpointError(f"{layout.index}: shard {f.name} is not a regular file; replace it with "
                                          f"the weights")
            files.append(open_file(f))
    except BaseException:
        for f in files:
            f.close()
        raise
    return files
