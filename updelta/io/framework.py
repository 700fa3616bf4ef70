"""Training frameworks' own checkpoints: FSDP distributed checkpoints are read; DeepSpeed ZeRO and verl shards are
refused in one line naming their converter (docs/inputs.md).

**FSDP / torch.distributed.checkpoint (DCP)**: a folder with `.metadata` and `__R_K.distcp` files, as
`torch.distributed.checkpoint.save` writes it (FileSystemWriter, torch_save format). `.metadata` is a pickle of
`torch.distributed.checkpoint.metadata.Metadata`; it is read with a restricted unpickler that builds only the DCP
metadata classes, `torch.Size`, dtypes, layouts and paths (anything else is refused), never with `pickle.load`.
Each tensor is stored as chunks; each chunk is one `torch.save` zip at a byte range of a `.distcp` file. Its
`data.pkl` is read with a second restricted unpickler that only records the storage dtype, offset, shape and
strides (nothing from torch is called), and its storage record (`data/0`, stored uncompressed) is located in the
zip, so a chunk's elements are read with `pread` like a safetensors tensor: block by block, memory flat. Tensors
sharded along dim 0 (FSDP's layout) are read across their chunks in order; other shardings (tensor parallel
blocks), compressed chunks and non-contiguous chunks are refused with the converter
(`python -m torch.distributed.checkpoint.format_utils dcp_to_torch_save DIR OUT.pt`). Non-tensor entries (step
counters, RNG state) and optimizer state (`optimizer.` / `optim.` names) are left out.

**DeepSpeed ZeRO** (`global_stepN/*_model_states.pt`, `zero_pp_rank_*_optim_states.pt`, a `latest` file) and
**verl** (`model_world_size_W_rank_R.pt`, often under `actor/`): the weights are partitioned flat buffers that
only the framework's own merger reassembles; refused with the command that converts them.
"""
from __future__ import annotations

import io
import math
import os
import pickle
import re
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from updelta.errors import CheckpointError
from updelta.io.locations import RAW_DTYPES
from updelta.io.safetensors_file import pread_elements

DCP_CONVERT = "python -m torch.distributed.checkpoint.format_utils dcp_to_torch_save {dir} OUT.pt"
MAX_METADATA = 256 << 20
OPTIMIZER_PREFIXES = ("optimizer.", "optim.", "optimizer_state.", "optim_state.")
_DCP_CLASSES = {
    "torch.distributed.checkpoint.metadata": {"Metadata", "TensorStorageMetadata", "BytesStorageMetadata",
                                              "ChunkStorageMetadata", "TensorProperties", "MetadataIndex",
                                              "StorageMeta", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "pathlib": {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path"},
    "collections": {"OrderedDict"},
}
_LEGACY_STORAGES = {"DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
                    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
                    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool"}


class _MetadataUnpickler(pickle.Unpickler):
    """Builds DCP metadata objects only: the DCP classes, torch.Size and torch dtypes/layouts, paths."""

    def find_class(self, module, name):
        import torch  # torch: kept out of torch-free paths

        if module == "torch" and (name == "Size" or isinstance(getattr(torch, name, None), (torch.dtype,
                                                                                            torch.layout))):
            return getattr(torch, name)
        if name in _DCP_CLASSES.get(module, ()):
            mod = __import__(module, fromlist=[name])
            return getattr(mod, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not a DCP metadata class")


@dataclass
class _Storage:
    dtype: str
    key: str
    numel: int


@dataclass
class _Tensor:
    storage: _Storage
    offset: int
    shape: tuple
    stride: tuple


class _Marker:
    def __init__(self, dtype):
        self.dtype = dtype


def _rebuild(storage, offset, shape, stride, *rest):
    return _Tensor(storage, int(offset), tuple(shape), tuple(stride))


class _ChunkUnpickler(pickle.Unpickler):
    """Reads a torch.save'd tensor's data.pkl without building it: records storage, offset, shape and strides."""

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild
        if module == "torch" and name in _LEGACY_STORAGES:
            return _Marker(_LEGACY_STORAGES[name])
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        raise pickle.UnpicklingError(f"{module}.{name} is not a plain tensor")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _Marker)):
            raise pickle.UnpicklingError("unexpected persistent id")
        return _Storage(pid[1].dtype, str(pid[2]), int(pid[4]))


class _Slice(io.RawIOBase):
    """A read-only seekable view of bytes [begin, begin+length) of an open file (pread, no shared position)."""

    def __init__(self, fd: int, begin: int, length: int):
        self.fd, self.begin, self.length, self.pos = fd, begin, length, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, pos, whence=0):
        self.pos = {0: pos, 1: self.pos + pos, 2: self.length + pos}[whence]
        return self.pos

    def tell(self):
        return self.pos

    def readinto(self, b):
        n = max(0, min(len(b), self.length - self.pos))
        data = os.pread(self.fd, n, self.begin + self.pos) if n else b""
        b[:len(data)] = data
        self.pos += len(data)
        return len(data)


@dataclass(frozen=True)
class _Piece:
    fd: int
    path: Path
    offset: int  # absolute byte offset of the chunk's first element in its .distcp file
    start: int  # first element of the chunk in the flattened tensor
    count: int


def is_dcp(p: Path) -> bool:
    return p.is_dir() and (p / ".metadata").is_file() and any(p.glob("*.distcp"))


def dcp_folder(p: Path) -> Path | None:
    """`p` itself, or the single `pytorch_model_fsdp_*` folder (accelerate's FSDP layout) inside it."""
    if is_dcp(p):
        return p
    if p.is_dir():
        inner = [q for q in p.glob("pytorch_model_fsdp_*") if is_dcp(q)]
        if len(inner) == 1:
            return inner[0]
    return None


class DCPFile:
    """The model tensors of a torch.distributed.checkpoint folder, read by element ranges across chunks."""

    location_format = "dcp"

    def __init__(self, metadata: str | os.PathLike):
        self.path = Path(metadata)
        self.location_path = str(self.path)
        self.folder = self.path.parent
        self.fds: dict[str, int] = {}
        self.tensors: dict[str, tuple[str, tuple[int, ...], list[_Piece]]] = {}
        self.left_out: list[str] = []
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        self.size = self.path.stat().st_size + sum(os.fstat(fd).st_size for fd in self.fds.values())

    def _refuse(self, why: str) -> CheckpointError:
        return CheckpointError(f"{self.folder}: distributed checkpoint {why}; convert it with "
                               + DCP_CONVERT.format(dir=self.folder))

    def _open(self) -> None:
        from torch.distributed.checkpoint.metadata import (  # torch: kept out of torch-free paths
            BytesStorageMetadata,
            TensorStorageMetadata,
        )

        if self.path.stat().st_size > MAX_METADATA:
            raise self._refuse(".metadata is too large")
        try:
            with open(self.path, "rb") as fh:
                md = _MetadataUnpickler(fh).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError,
                IndexError, KeyError, RecursionError) as e:
            raise CheckpointError(f"{self.path}: not a readable distributed-checkpoint .metadata "
                                  f"({str(e)[:160] or type(e).__name__}); only DCP metadata classes are "
                                  f"unpickled") from None
        sd = getattr(md, "state_dict_metadata", None)
        storage = getattr(md, "storage_data", None)
        if not isinstance(sd, dict) or not isinstance(storage, dict):
            raise CheckpointError(f"{self.path}: not a distributed-checkpoint .metadata (no state_dict_metadata)")
        infos: dict[tuple[str, tuple], object] = {}
        for key, info in storage.items():
            infos[(key.fqn, tuple(key.offset) if key.offset is not None else None)] = info
        for fqn, tm in sd.items():
            if isinstance(tm, BytesStorageMetadata) or fqn.startswith(OPTIMIZER_PREFIXES):
                self.left_out.append(fqn)
                continue
            if not isinstance(tm, TensorStorageMetadata):
                raise CheckpointError(f"{self.path}: entry {fqn} is a {type(tm).__name__}")
            dtype = str(tm.properties.dtype).removeprefix("torch.")
            shape = tuple(int(d) for d in tm.size)
            self.tensors[fqn] = (dtype, shape, self._pieces(fqn, dtype, shape, tm.chunks, infos))

    def _pieces(self, fqn, dtype, shape, chunks, infos) -> list[_Piece]:
        if dtype not in RAW_DTYPES:
            raise self._refuse(f"tensor {fqn} has dtype {dtype}, which updelta does not read")
        row = math.prod(shape[1:]) if shape else 1
        pieces, pos = [], 0
        for ch in sorted(chunks, key=lambda c: tuple(c.offsets)):
            offs, sizes = tuple(int(x) for x in ch.offsets), tuple(int(x) for x in ch.sizes)
            if shape and (any(offs[1:]) or sizes[1:] != shape[1:]):
                raise self._refuse(f"tensor {fqn} is sharded along a dimension other than 0 (chunk at {offs})")
            start = offs[0] * row if shape else 0
            if start != pos:
                raise self._refuse(f"tensor {fqn}: chunks leave a gap or overlap at element {pos}")
            info = infos.get((fqn, offs))
            if info is None:
                raise self._refuse(f"tensor {fqn}: no storage record for the chunk at {offs}")
            count = math.prod(sizes)
            pieces.append(self._locate(fqn, dtype, sizes, info, start, count))
            pos += count
        if pos != math.prod(shape):
            raise self._refuse(f"tensor {fqn}: chunks hold {pos} of {math.prod(shape)} elements")
        return pieces

    def _fd(self, rel: str) -> tuple[int, Path]:
        if not isinstance(rel, str) or "/" in rel or "\\" in rel or rel in ("", ".", "..") or not rel.endswith(
                ".distcp"):
            raise CheckpointError(f"{self.path}: names storage file {rel!r}; expected a .distcp file beside it")
        p = self.folder / rel
        if rel not in self.fds:
            if not p.is_file():
                raise CheckpointError(f"{self.path}: names {rel}, which is missing; copy every .distcp file of "
                                      f"the checkpoint beside .metadata")
            self.fds[rel] = os.open(p, os.O_RDONLY)
        return self.fds[rel], p

    def _locate(self, fqn, dtype, sizes, info, start, count) -> _Piece:
        """Where the chunk's elements are in its .distcp file: parse its torch.save zip (data.pkl, data/0)."""
        if getattr(info, "transform_descriptors", None):
            raise self._refuse(f"tensor {fqn} is stored with transforms {list(info.transform_descriptors)}")
        fd, p = self._fd(info.relative_path)
        begin, length = int(info.offset), int(info.length)
        if begin < 0 or length < 0 or begin + length > os.fstat(fd).st_size:
            raise CheckpointError(f"{p}: tensor {fqn}: bytes [{begin}, {begin + length}) lie outside the file "
                                  f"(truncated); re-copy the checkpoint")
        try:
            z = zipfile.ZipFile(_Slice(fd, begin, length))
            names = z.namelist()
            pkl = next(n for n in names if n.endswith("/data.pkl") or n == "data.pkl")
            prefix = pkl[:-len("data.pkl")]
            if prefix + "byteorder" in names and z.read(prefix + "byteorder") != b"little":
                raise self._refuse(f"tensor {fqn} is stored big-endian")
            t = _ChunkUnpickler(io.BytesIO(z.read(pkl))).load()
            if not isinstance(t, _Tensor):
                raise pickle.UnpicklingError("not a tensor")
            rec = z.getinfo(prefix + "data/" + t.storage.key)
        except (zipfile.BadZipFile, StopIteration, KeyError, pickle.UnpicklingError, EOFError, ValueError,
                TypeError, struct.error) as e:
            raise self._refuse(f"chunk of tensor {fqn} in {p.name} is not a plain torch.save tensor "
                               f"({str(e)[:120] or type(e).__name__})") from None
        raw = RAW_DTYPES[dtype]
        contiguous = tuple(math.prod(t.shape[i + 1:]) for i in range(len(t.shape)))
        if (t.storage.dtype != dtype or t.shape != sizes or (count > 1 and t.stride != contiguous)
                or rec.compress_type != zipfile.ZIP_STORED or rec.file_size != t.storage.numel * raw.itemsize
                or t.offset < 0 or t.offset + count > t.storage.numel):
            raise self._refuse(f"chunk of tensor {fqn} in {p.name} is not a contiguous {dtype} {list(sizes)} "
                               f"tensor")
        head = os.pread(fd, 30, begin + rec.header_offset)
        if len(head) < 30 or head[:4] != b"PK\x03\x04":
            raise self._refuse(f"chunk of tensor {fqn} in {p.name} has a damaged zip entry")
        n_name, n_extra = struct.unpack("<HH", head[26:30])
        data = begin + rec.header_offset + 30 + n_name + n_extra
        if data + rec.file_size > begin + length:
            raise self._refuse(f"chunk of tensor {fqn} in {p.name} runs past its byte range")
        return _Piece(fd, p, data + t.offset * raw.itemsize, start, count)

    def names(self) -> list[str]:
        return list(self.tensors)

    def dtype_name(self, name: str) -> str:
        return self.tensors[name][0]

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name][1]

    def read(self, name: str, start: int, count: int, out: np.ndarray | None = None) -> np.ndarray:
        """Elements [start, start+count) of the flattened tensor, raw storage (bf16 as uint16), across chunks."""
        dtype, _, pieces = self.tensors[name]
        raw = RAW_DTYPES[dtype]
        nbytes = count * raw.itemsize
        if out is None or out.nbytes < nbytes:
            out = np.empty(nbytes, dtype=np.uint8)
        end = start + count
        for pc in pieces:
            lo, hi = max(start, pc.start), min(end, pc.start + pc.count)
            if lo < hi:
                at = (lo - start) * raw.itemsize
                pread_elements(pc.fd, pc.offset, raw, lo - pc.start, hi - lo, out[at:at + (hi - lo) * raw.itemsize],
                               pc.path, name)
        return out[:nbytes].view(raw)

    def close(self) -> None:
        for fd in self.fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = {}

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


# --- refused layouts -------------------------------------------------------------------------------------------

_STEP = re.compile(r"global_step_?\d+")
_VERL = re.compile(r"model_world_size_\d+_rank_\d+\.pt")


def deepspeed_refusal(p: Path) -> str | None:
    """The one-line refusal of a DeepSpeed ZeRO checkpoint folder (the run folder or a global_stepN folder)."""
    if not p.is_dir():
        return None
    if any(p.glob("*_model_states.pt")) or any(p.glob("zero_pp_rank_*_optim_states.pt")):
        root, tag = p.parent, p.name
    elif (p / "latest").is_file() and any(q.is_dir() and _STEP.fullmatch(q.name) for q in p.iterdir()):
        root, tag = p, None
    else:
        return None
    script = root / "zero_to_fp32.py"
    cmd = f"python {script} {root} OUT_DIR --safe_serialization" + (f" -t {tag}" if tag else "")
    where = "" if script.is_file() else " (zero_to_fp32.py ships with deepspeed: deepspeed/utils/zero_to_fp32.py)"
    return (f"{p}: a DeepSpeed ZeRO checkpoint (partitioned *_model_states.pt / *_optim_states.pt), which updelta "
            f"does not read; convert it first: {cmd}{where}, then pass OUT_DIR")


def verl_refusal(p: Path) -> str | None:
    """The one-line refusal of a verl FSDP checkpoint (model_world_size_W_rank_R.pt shards)."""
    if not p.is_dir():
        return None
    for d in (p, p / "actor"):
        if d.is_dir() and any(_VERL.fullmatch(q.name) for q in d.iterdir()):
            return (f"{p}: verl FSDP shards ({d.name}/model_world_size_W_rank_R.pt), which updelta does not read; "
                    f"merge them first: python -m verl.model_merger merge --backend fsdp --local_dir {d} "
                    f"--target_dir OUT_DIR, then pass OUT_DIR")
    return None


def refuse_framework(p: Path) -> None:
    """Raise the refusal of a framework checkpoint that updelta does not read (DeepSpeed ZeRO, verl)."""
    why = deepspeed_refusal(p) or verl_refusal(p)
    if why:
        raise CheckpointError(why)

