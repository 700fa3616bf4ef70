"""Metrics: pure functions of tensors, registered by name.

`REGISTRY` maps each metric name (the column name in result tables) to a `Metric`
whose function is the definition (see its docstring for the formula and the
reference in docs/metrics.md). The engine computes families of
cheap metrics in one fused pass (`elementwise.partial_sums`) and checks itself
against these definitions in the tests. `sums` (partial sums -> columns) and `summary`
(spectral medians over tensors) need no torch: saved results are read without it.
"""
from updelta.metrics.registry import REGISTRY, Metric, metric  # noqa: F401
