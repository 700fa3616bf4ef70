"""The on-disk cache of base-weight decompositions (the file side of `updelta.scan.jobs.spectral_cache`).

One entry per key: a safetensors file `<key>.safetensors` (tensors only, no code: never pickle) whose metadata
repeats the key, under `$UPDELTA_CACHE_DIR/spectral/` (default `$XDG_CACHE_HOME/updelta/spectral`, else
`~/.cache/updelta/spectral`; `$UPDELTA_SPECTRAL_CACHE_DIR` names the folder itself). Entries are written
atomically (a temporary file beside, then a rename), so a reader sees a whole entry or none; an unreadable entry, or one whose metadata names another key, is a miss and
is removed. Size-bounded: after each write the least recently used entries (file mtime, touched on every hit) are
removed until the folder holds at most `UPDELTA_SPECTRAL_CACHE_MB` megabytes (default 4096). docs/metrics.md,
"Decompositions and the base cache".
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from updelta.atomic import atomic_path

ENV_DIR = "UPDELTA_CACHE_DIR"
ENV_SPECTRAL_DIR = "UPDELTA_SPECTRAL_CACHE_DIR"  # this cache's folder itself (the test suite points it at its tmp)
ENV_MAX_MB = "UPDELTA_SPECTRAL_CACHE_MB"
DEFAULT_MAX_MB = 4096
SUFFIX = ".safetensors"


def cache_root() -> Path:
    """The spectral cache folder: `$UPDELTA_CACHE_DIR/spectral`, else `$XDG_CACHE_HOME/updelta/spectral`, else
    `~/.cache/updelta/spectral` (the same root as updelta's model cache); `$UPDELTA_SPECTRAL_CACHE_DIR` names the
    folder itself."""
    own = os.environ.get(ENV_SPECTRAL_DIR)
    if own:
        return Path(own).expanduser()
    env = os.environ.get(ENV_DIR)
    if env:
        root = Path(env).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "updelta"
    return root / "spectral"


def max_bytes() -> int:
    try:
        mb = float(os.environ.get(ENV_MAX_MB, DEFAULT_MAX_MB))
    except ValueError:
        mb = DEFAULT_MAX_MB
    return int(max(mb, 0) * (1 << 20))


class DecompCache:
    """get/put of named float arrays under a hex key, in `root` (default `cache_root()`), at most `limit` bytes."""

    def __init__(self, root: Path | None = None, limit: int | None = None):
        self.root = Path(root) if root is not None else cache_root()
        self.limit = max_bytes() if limit is None else int(limit)

    def path(self, key: str) -> Path:
        if not key or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"cache key {key!r}: expected lowercase hex")
        return self.root / (key + SUFFIX)

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        """The arrays stored under `key`, or None (absent, unreadable or another key's)."""
        from safetensors import safe_open  # loaded only with the cache

        p = self.path(key)
        if not p.is_file():
            return None
        try:
            with safe_open(str(p), framework="numpy") as f:
                if (f.metadata() or {}).get("key") != key:
                    raise ValueError("key mismatch")
                out = {n: f.get_tensor(n) for n in f.keys()}
        except Exception:  # a damaged or foreign file is a miss, never an error
            p.unlink(missing_ok=True)
            return None
        try:
            os.utime(p)  # least recently used eviction
        except OSError:
            pass
        return out

    def put(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        """Store `arrays` under `key` atomically, then evict down to the size bound. Write errors are ignored
        (a read-only or full disk leaves the cache unused, never the scan failed)."""
        from safetensors.numpy import save_file  # loaded only with the cache

        total = sum(int(a.nbytes) for a in arrays.values())
        if total > self.limit:
            return
        try:
            with atomic_path(self.path(key)) as tmp:
                save_file({n: np.ascontiguousarray(a) for n, a in arrays.items()}, str(tmp), metadata={"key": key})
            self.evict()
        except OSError:
            return

    def entries(self) -> list[tuple[float, int, Path]]:
        out = []
        for p in self.root.glob("*" + SUFFIX):
            try:
                st = p.stat()
            except OSError:
                continue
            out.append((st.st_mtime, st.st_size, p))
        return sorted(out)

    def evict(self) -> None:
        """Remove least recently used entries until the folder holds at most `limit` bytes."""
        ents = self.entries()
        size = sum(s for _, s, _ in ents)
        for _, s, p in ents:
            if size <= self.limit:
                break
            p.unlink(missing_ok=True)
            size -= s
