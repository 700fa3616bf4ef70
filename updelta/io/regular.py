"""A checkpoint file opened for block reads: a regular file, a read-only descriptor and its size, or one line."""
from __future__ import annotations

import os
import stat
from pathlib import Path

from updelta.errors import CheckpointError


def open_regular(path: Path, what: str) -> tuple[int, int]:
    """(read-only descriptor, size in bytes) of `path`; a `CheckpointError` naming the file when it is not a regular
    file (`what`: the thing to pass instead, e.g. "the .gguf file itself") or cannot be opened."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointError(f"{path}: not a regular file; pass {what}")
        return os.open(path, os.O_RDONLY), st.st_size
    except OSError as e:
        raise CheckpointError(f"{path}: cannot open ({e.strerror})") from None


class Descriptor:
    """What a file reader that holds one read-only descriptor (`_fd`, -1 when closed) shares: closing it, also when
    the reader is dropped."""

    _fd: int = -1

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
