"""A small progress bar on stderr (results go to stdout or files, never here).

    with Progress(total=n_bytes, desc="diff", unit="B") as bar:
        bar.update(k)

The bar redraws at most 10 times a second. It is silent when `UPDELTA_PROGRESS=0`
is set (tests set it) or when `enabled=False` is passed.
"""
from __future__ import annotations

import os
import sys
import time


def _fmt(x: float, unit: str) -> str:
    if unit == "B":
        for u in ("B", "KB", "MB", "GB", "TB"):
            if abs(x) < 1000 or u == "TB":
                return f"{x:.1f}{u}" if u != "B" else f"{int(x)}B"
            x /= 1000
    return f"{int(x)}" if float(x).is_integer() else f"{x:.1f}"


class Progress:
    """A throttled text progress bar written to stderr."""

    def __init__(self, total: float, desc: str = "", unit: str = "", enabled: bool | None = None,
                 stream=None, width: int = 28):
        self.total = max(float(total), 0.0)
        self.desc = desc
        self.unit = unit
        self.n = 0.0
        self.width = width
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            enabled = os.environ.get("UPDELTA_PROGRESS", "1") != "0"
        self.enabled = enabled
        self._t0 = time.perf_counter()
        self._last = 0.0
        self.postfix = ""

    def __enter__(self) -> "Progress":
        self._draw(force=True)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, k: float = 1, postfix: str | None = None) -> None:
        self.n += k
        if postfix is not None:
            self.postfix = postfix
        self._draw()

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        frac = min(self.n / self.total, 1.0) if self.total else 1.0
        filled = int(round(frac * self.width))
        bar = "#" * filled + "-" * (self.width - filled)
        el = now - self._t0
        rate = self.n / el if el > 0 else 0.0
        rate_s = f" {_fmt(rate, self.unit)}/s" if self.unit else ""
        tail = f" {self.postfix}" if self.postfix else ""
        msg = (f"\r{self.desc} [{bar}] {frac * 100:5.1f}% {_fmt(self.n, self.unit)}/"
               f"{_fmt(self.total, self.unit)} {el:5.1f}s{rate_s}{tail}")
        self.stream.write(msg[:200])
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()
            self.enabled = False
