"""The metric registry: name -> pure function with its definition and reference.

Each registered function takes tensors (W0, W1 for per-tensor metrics) and returns
a number or a list; its docstring states the formula and cites the source. The
registry lists every per-tensor metric (`updelta.metrics.REGISTRY`) and is what the tests check
the fused engine against; it holds no state beyond the table filled at import time.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Metric:
    """One metric: its column name, family, defining function and reference."""

    name: str
    family: str  # "elementwise", "spectral_fast", "spectral_full", "pair"
    fn: Callable
    reference: str

    @property
    def doc(self) -> str:
        return inspect.getdoc(self.fn) or ""

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


REGISTRY: dict[str, Metric] = {}


def metric(name: str, family: str, reference: str) -> Callable[[Callable], Callable]:
    """Decorator: register `fn` as the definition of metric `name`."""

    def wrap(fn: Callable) -> Callable:
        if name in REGISTRY:
            raise ValueError(f"metric {name!r} registered twice")
        REGISTRY[name] = Metric(name, family, fn, reference)
        return fn

    return wrap
