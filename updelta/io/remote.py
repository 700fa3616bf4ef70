"""Remote checkpoints: fsspec URLs (`s3://`, `gs://`, `hf://`, `https://`, `http://`) read by range requests.

Needs the optional extra `updelta[remote]` (fsspec, and aiohttp for http/https; s3fs / gcsfs for s3 / gs).
A URL is either one `.safetensors` file or a folder holding `model.safetensors.index.json` (its shards are
the files its `weight_map` names, beside it) or `model.safetensors`; the folder's `config.json` is read when there
is one (docs/inputs.md).

A `RemoteSafetensorsFile` is a `TensorFile`: its header is fetched with two range requests (the 8-byte length,
then the header) and validated by `safetensors_header.parse_header`, the same rules as local files, against the
size the server reports. Blocks are read by range requests of at least the block and at most a 4 MiB read-ahead
window that never runs past the tensor's end (one window per thread and file), so memory stays flat whatever the
model size. Before anything else each file is probed with a range request that does not start at byte 0: a server
that answers with the whole file (no range support) is refused in one line instead of being downloaded into
memory. Its location (`io.locations`, kind `remote`) carries only the URL, so a job can reopen it in another
process.
"""
from __future__ import annotations

import math
import posixpath
import threading

import numpy as np

from updelta.errors import CheckpointError
from updelta.io.jsonfiles import MAX_JSON, check_index, parse_json
from updelta.io.safetensors_file import DTYPES, HeaderEntries
from updelta.io.safetensors_header import header_length, parse_header

INSTALL = "pip install 'updelta[remote]'"
READAHEAD = 4 << 20  # bytes fetched per range request when blocks are smaller (one window per thread and file)


class URLPath(str):
    """A URL that answers `.name` (its last path component) like the `Path` of a local file."""

    @property
    def name(self) -> str:
        return posixpath.basename(self.rstrip("/"))

    def child(self, name: str) -> "URLPath":
        return URLPath(self.rstrip("/") + "/" + name)


def filesystem(url: str):
    """The fsspec filesystem of `url` (one line naming the extra to install when fsspec or its backend is missing)."""
    try:
        import fsspec  # optional extra: remote
    except ImportError:
        raise CheckpointError(f"{url}: reading URLs needs fsspec; {INSTALL}") from None
    try:
        fs, _ = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        raise CheckpointError(f"{url}: no fsspec backend for this URL ({str(e).splitlines()[0][:160]}); "
                              f"{INSTALL} (s3:// needs s3fs, gs:// gcsfs)") from None
    return fs


def _fail(url, e: Exception, what: str) -> CheckpointError:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return CheckpointError(f"{url}: {what} ({type(e).__name__}: {first[:160]})")


def fetch_small(fs, url: str) -> bytes | None:
    """The whole of a small remote file (a JSON index or config), or None when it does not exist."""
    try:
        if not fs.exists(url):
            return None
        size = fs.size(url)
        if size is not None and size > MAX_JSON:
            raise CheckpointError(f"{url}: {size} bytes is too large for a JSON index or config")
        return fs.cat_file(url)
    except CheckpointError:
        raise
    except FileNotFoundError:
        return None
    except Exception as e:
        raise _fail(url, e, "cannot be fetched") from None


class RemoteSafetensorsFile(HeaderEntries):
    """One remote .safetensors file: validated header, block reads by range requests."""

    location_format = "remote"

    def __init__(self, url: str, fs=None):
        self.path = URLPath(url)
        self.location_path = str(url)
        self.fs = fs if fs is not None else filesystem(url)
        try:
            size = self.fs.size(url)
        except FileNotFoundError:
            raise CheckpointError(f"{url}: no such remote file (404); check the URL") from None
        except Exception as e:
            raise _fail(url, e, "cannot be reached") from None
        if size is None:
            raise CheckpointError(f"{url}: the server reports no size (Content-Length); serve the file from a "
                                  f"server that does, or download it and pass the local path")
        self.size = int(size)
        self._window = threading.local()
        self._probe()
        n = header_length(self._get(0, min(8, self.size)), self.size, url)
        header = parse_header(self._get(8, 8 + n), self.size, url)
        self.metadata = header.metadata
        self.data_start = header.data_start
        self.entries = {name: (e.dtype, e.shape, e.begin) for name, e in header.entries.items()}

    def _probe(self) -> None:
        """Refuse a server that ignores Range requests (it would send the whole file for every block)."""
        if self.size < 2:
            return
        try:
            with self.fs.open(self.location_path, "rb", cache_type="none", block_size=1 << 16) as f:
                f.seek(1)
                got = f.read(1)
        except ValueError as e:
            if "range" in str(e).lower():
                raise CheckpointError(f"{self.path}: the server does not answer HTTP range requests (it sends "
                                      f"the whole file), which updelta needs to stream it; serve it with range "
                                      f"support (any object store or static file server does), or download it "
                                      f"and pass the local path") from None
            raise _fail(self.path, e, "cannot be read") from None
        except Exception as e:
            raise _fail(self.path, e, "cannot be read") from None
        if len(got) != 1:
            raise CheckpointError(f"{self.path}: a range request returned {len(got)} bytes instead of 1; serve it "
                                  f"with range support, or download it and pass the local path")

    def _get(self, begin: int, end: int) -> bytes:
        try:
            data = self.fs.cat_file(self.location_path, start=begin, end=end)
        except Exception as e:
            raise _fail(self.path, e, f"range request for bytes [{begin}, {end}) failed") from None
        if len(data) != end - begin:
            raise CheckpointError(f"{self.path}: a range request for bytes [{begin}, {end}) returned {len(data)} "
                                  f"bytes (changed or truncated on the server, or no range support); re-upload "
                                  f"it or download it and pass the local path")
        return data


    def read(self, name: str, start: int, count: int, out: np.ndarray | None = None) -> np.ndarray:
        """Elements [start, start+count) of the flattened tensor, raw storage (bf16 as uint16): one range request."""
        dtype, _, offset = self.entries[name]
        raw = DTYPES[dtype][1]
        if raw is None:
            raise CheckpointError(f"{self.path}: tensor {name} is {dtype}, which updelta does not read")
        nbytes = count * raw.itemsize
        if out is None or out.nbytes < nbytes:
            out = np.empty(nbytes, dtype=np.uint8)
        if nbytes:
            begin = offset + start * raw.itemsize
            w0, data = getattr(self._window, "span", (0, b""))
            if not (w0 <= begin and begin + nbytes <= w0 + len(data)):
                # read ahead up to READAHEAD bytes, never past the end of this tensor
                tensor_end = offset + math.prod(self.entries[name][1]) * raw.itemsize
                w0, data = begin, self._get(begin, max(begin + nbytes, min(begin + READAHEAD, tensor_end)))
                self._window.span = (w0, data)
            out[:nbytes] = np.frombuffer(data, dtype=np.uint8, count=nbytes, offset=begin - w0)
        return out[:nbytes].view(raw)

    def sample(self) -> bytes:
        """The first and last 64 KiB (for the checkpoint's sampled fingerprint)."""
        k = min(1 << 16, self.size)
        return self._get(0, k) + self._get(self.size - k, self.size)

    def close(self) -> None:
        pass


def open_remote(url: str):
    """(path, format, files, config, weight_map, index) of the checkpoint at `url`, every file's header validated."""
    fs = filesystem(url)
    root = URLPath(url.rstrip("/"))
    if root.endswith(".safetensors"):
        return root, "safetensors", [RemoteSafetensorsFile(root, fs)], {}, None, None
    if root.endswith((".bin", ".pt", ".pth")):
        raise CheckpointError(f"{url}: remote .bin/.pt files are not read (unpickling needs the whole file); "
                              f"download it, or convert it to safetensors")
    config_raw = fetch_small(fs, root.child("config.json"))
    try:
        config = parse_json(config_raw, root.child("config.json")) if config_raw is not None else {}
    except CheckpointError:
        config = {}  # as for a local folder: config.json only refines family detection
    index = root.child("model.safetensors.index.json")
    raw = fetch_small(fs, index)
    if raw is not None:
        wm = check_index(parse_json(raw, index), index)
        shards = [root.child(s) for s in sorted(set(wm.values()))]
        fmt, wmap, idx = "safetensors-sharded", wm, index
    elif fetch_small_exists(fs, root.child("model.safetensors")):
        shards, fmt, wmap, idx = [root.child("model.safetensors")], "safetensors", None, None
    else:
        raise CheckpointError(f"{url}: no model.safetensors.index.json or model.safetensors at this URL; pass the "
                              f"URL of a safetensors file or of a folder that holds one of them")
    files: list[RemoteSafetensorsFile] = []
    for s in shards:
        try:
            files.append(RemoteSafetensorsFile(s, fs))
        except CheckpointError as e:
            if idx is not None and "no such remote file" in str(e):
                raise CheckpointError(f"{idx}: names shard {s.name}, which is missing at {s}; upload it beside "
                                      f"the index") from None
            raise
    return root, fmt, files, config, wmap, idx


def fetch_small_exists(fs, url: str) -> bool:
    try:
        return bool(fs.exists(url))
    except Exception as e:
        raise _fail(url, e, "cannot be reached") from None
