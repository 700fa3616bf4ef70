"""updelta: measure how post-training changed a language model's weights.

    import updelta
    r = updelta.diff("base/", "finetuned/")       # r.tensors: one row per tensor
    c = updelta.compare("base/", {"sft": "runs/sft", "dft": "runs/dft"})
    r2 = updelta.load("out.parquet")

The names below are imported on first use, so `import updelta` is cheap (no pandas, no torch).
"""
import importlib

from updelta._version import __version__  # noqa: F401

_LAZY = {"diff": "api", "compare": "api", "load": "api", "DiffOptions": "options", "Result": "tables.result"}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'updelta' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
