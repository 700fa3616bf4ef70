"""updelta: measure how post-training changed a language model's weights.

    import updelta
    r = updelta.diff("base/", "finetuned/")       # r.tensors: one row per tensor
    c = updelta.compare("base/", {"sft": "runs/sft", "dft": "runs/dft"})
    r2 = updelta.load("out.parquet")
"""
from ._version import __version__  # noqa: F401
from .api import compare, diff, load  # noqa: E402,F401  (torch is imported by diff/compare, on call)
from .options import DiffOptions  # noqa: E402,F401
from .result import Result  # noqa: E402,F401
