"""A GGUF reader: tensors de-quantized to float32 block by block, with flat memory (docs/formats.md, "GGUF").

The header is validated by `gguf_header` before anything in it is trusted. A read of elements [start, start+count)
of a tensor preads only the ggml blocks that hold them (ne[0] is a whole number of blocks, so element e lies in
block e // block_size at byte begin + (e // block_size) * block_bytes) and de-quantizes them with the `gguf`
package's own numpy de-quantizers (`gguf.quants.dequantize`), at most `CHUNK` elements at a time: a 7B Q4_K_M file
is never loaded whole, and the file is never memory-mapped. F32, F16, BF16, the Q4/Q5/Q8 legacy types, the
K-quants, the IQ types, TQ and MXFP4 read this way (whatever the installed `gguf` de-quantizes); F64 is read as
float64, I8/I16/I32/I64 tensors are listed as non-float (never compared); a type the installed `gguf` cannot
de-quantize (Q8_1, Q8_K in gguf 0.19) is refused by name when the file is opened.

`read(name, ...)` gives the stored values (llama.cpp's convention); `read(name, ..., hf=True)` gives them in
Hugging Face's convention (q/k rows un-permuted, Gemma norms shifted back, ...), as `gguf_names.Transform` says
for the file's architecture. `GGUFRef` is the tensor of a checkpoint made of GGUF files: its storage dtype is the
ggml type ("Q4_K"), its values float32; its location (`locations.TensorLocation`, format "gguf" or "gguf-hf") is
re-opened in any process from the path alone.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from updelta.errors import CheckpointError
from updelta.io.regular import Descriptor, open_regular
from updelta.io.gguf_header import read_header
from updelta.io.gguf_names import transform_of

CHUNK = 1 << 20  # elements de-quantized per call (bounded temporaries)
INTEGER = {"I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64"}
SPLIT = re.compile(r"^(?P<stem>.+)-(?P<k>\d{5})-of-(?P<n>\d{5})\.gguf$")
_CAN: dict[str, bool] = {}


def can_dequantize(type_name: str) -> bool:
    """Whether the installed `gguf` package de-quantizes ggml type `type_name` (tried once on a zero block)."""
    if type_name not in _CAN:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType  # gguf: imported when a GGUF file is read
        from gguf.quants import dequantize  # gguf: imported when a GGUF file is read

        t = GGMLQuantizationType[type_name]
        try:
            dequantize(np.zeros((1, GGML_QUANT_SIZES[t][1]), dtype=np.uint8), t)
            _CAN[type_name] = True
        except (NotImplementedError, KeyError, ValueError, TypeError):
            _CAN[type_name] = False
    return _CAN[type_name]


def gguf_version() -> str:
    try:
        from importlib.metadata import version  # loaded only on this path
        return version("gguf")
    except Exception:  # pragma: no cover
        return "?"


class GGUFFile(Descriptor):
    """One validated .gguf file: names, shapes, ggml types, metadata, and de-quantized block reads."""

    location_format = "gguf"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd = -1
        self._fd, self.size = open_regular(self.path, "the .gguf file itself")
        try:
            header = read_header(self._fd, self.size, self.path)
            for t in header.tensors.values():
                if t.type_name not in INTEGER and t.type_name != "F64" and not can_dequantize(t.type_name):
                    raise CheckpointError(f"{self.path}: tensor {t.name} is {t.type_name}, which the installed gguf "
                                          f"{gguf_version()} cannot de-quantize; upgrade gguf (pip install -U gguf) "
                                          f"or re-quantize the model to a type it reads")
        except BaseException:
            self.close()
            raise
        self.header = header
        self.metadata = header.metadata
        m = SPLIT.match(self.path.name)
        if m is not None and m["k"] != "00001" and "general.architecture" not in self.metadata:
            self.metadata = {**self._first_split_metadata(m), **self.metadata}  # the set's metadata is in split 1
        self.infos = header.tensors
        self._transforms: dict = {}

    def _first_split_metadata(self, m) -> dict:
        first = self.path.parent / f"{m['stem']}-00001-of-{m['n']}.gguf"
        try:
            fd = os.open(first, os.O_RDONLY)
        except OSError as e:
            raise CheckpointError(f"{first}: cannot open the first split of {self.path.name} ({e.strerror}); "
                                  f"download every split") from None
        try:
            return read_header(fd, os.fstat(fd).st_size, first).metadata
        finally:
            os.close(fd)

    @property
    def location_path(self) -> str:
        return str(self.path)

    @property
    def architecture(self) -> str | None:
        a = self.metadata.get("general.architecture")
        return a if isinstance(a, str) else None

    def names(self) -> list[str]:
        return list(self.infos)

    def gguf_type(self, name: str) -> str:
        return self.infos[name].type_name

    def dtype_name(self, name: str) -> str:
        """The dtype of what `read` returns: float32 (de-quantized), float64, or an integer type (not compared)."""
        t = self.infos[name].type_name
        return INTEGER.get(t, "float64" if t == "F64" else "float32")

    def shape(self, name: str) -> tuple[int, ...]:
        return self.infos[name].shape

    def transform(self, name: str):
        """How tensor `name` becomes its Hugging Face counterpart (`gguf_names.Transform`), computed once."""
        tr = self._transforms.get(name)
        if tr is None:
            tr = self._transforms[name] = transform_of(self, name)
        return tr

    def hf_shape(self, name: str) -> tuple[int, ...]:
        return self.transform(name).shape

    # ---- reads -------------------------------------------------------------------------------------------------

    def _pread(self, pos: int, n: int, name: str) -> np.ndarray:
        buf = np.empty(n, dtype=np.uint8)
        view, got = memoryview(buf), 0
        while got < n:
            k = os.preadv(self._fd, [view[got:]], pos + got)
            if k <= 0:
                raise CheckpointError(f"{self.path}: tensor {name}: short read at byte {pos + got} (truncated or "
                                      f"changed while being read); re-download it")
            got += k
        return buf

    def _stored(self, name: str, start: int, count: int, vals: np.ndarray) -> None:
        """Stored (de-quantized) values of elements [start, start+count) into `vals` (float32 or float64)."""
        from gguf import GGMLQuantizationType  # gguf: imported when a GGUF file is read
        from gguf.quants import dequantize  # gguf: imported when a GGUF file is read

        info = self.infos[name]
        if info.type_name in INTEGER:
            raise CheckpointError(f"{self.path}: tensor {name} is {info.type_name}; updelta compares float tensors")
        qtype = GGMLQuantizationType[info.type_name]
        b, bb = info.block, info.block_bytes
        step = max(CHUNK // b, 1) * b
        pos, end = start, start + count
        while pos < end:
            stop = min(end, pos + step)
            b0, b1 = pos // b, -(-stop // b)
            raw = self._pread(info.begin + b0 * bb, (b1 - b0) * bb, name)
            if info.type_name == "F64":
                dq = raw.view("<f8")
            else:
                dq = dequantize(raw.reshape(1, -1), qtype).reshape(-1)
            vals[pos - start:stop - start] = dq[pos - b0 * b:stop - b0 * b]
            pos = stop

    def read(self, name: str, start: int, count: int, out: np.ndarray | None = None, hf: bool = False) -> np.ndarray:
        """Elements [start, start+count) of the flattened tensor as float32 (float64 for F64): the stored values,
        or with `hf` the Hugging Face tensor's (`transform`). `out`: a reusable uint8 buffer."""
        dtype = np.float64 if self.infos[name].type_name == "F64" else np.float32
        nbytes = count * np.dtype(dtype).itemsize
        if out is None or out.nbytes < nbytes:
            out = np.empty(nbytes, dtype=np.uint8)
        vals = out[:nbytes].view(dtype)
        if not hf:
            self._stored(name, start, count, vals)
            return vals
        self.transform(name).read(self, name, start, count, vals)
        return vals



def split_files(p: Path) -> tuple[Path, ...] | None:
    """All files of the split set `p` belongs to (`NAME-0000k-of-0000N.gguf`), checked complete; None for a
    file that is not part of a split set."""
    m = SPLIT.match(p.name)
    if m is None:
        return None
    n = int(m["n"])
    if n < 1 or int(m["k"]) > n or int(m["k"]) < 1:
        raise CheckpointError(f"{p}: split number {m['k']} of {m['n']} is not a valid GGUF split name")
    files = tuple(p.parent / f"{m['stem']}-{k:05d}-of-{n:05d}.gguf" for k in range(1, n + 1))
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"{p}: part of a {n}-file GGUF split set, but {missing[0]} is missing "
                              f"({len(missing)} missing); download every split into {p.parent}")
    return files


def folder_files(p: Path) -> tuple[Path, ...] | None:
    """The GGUF model of folder `p` when it holds exactly one (one .gguf, or one complete split set)."""
    ggufs = sorted(q for q in p.glob("*.gguf") if q.is_file())
    if not ggufs:
        return None
    sets = {split_files(q) or (q,) for q in ggufs}
    if len(sets) > 1:
        raise CheckpointError(f"{p}: holds {len(sets)} GGUF models ({', '.join(sorted(s[0].name for s in sets))}); "
                              f"pass one .gguf file")
    return sets.pop()
