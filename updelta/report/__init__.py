"""The report: Markdown (for CI job summaries), self-contained HTML, figures, tables and summary.json.

    import updelta
    from updelta.report import write_report
    res = updelta.compare("base/", {"sft": "runs/sft", "grpo": "runs/grpo"})
    outcome = write_report(res, "report/", evals={"sft": "runs/sft/eval.json"}, gates=["rel_delta<=0.05"])
    outcome.passed        # False when a gate failed (the report still marks the failures)

Layout of the output folder (written atomically: built beside it, then renamed into place):
    report.md, report.html, summary.json, figures/*.png, tables/*.parquet (+ tables/meta.json;
    `updelta.load("report/tables")` reads the result back).
"""
_LAZY = {"Finding": ("updelta.report.findings", "Finding"), "compute_findings": ("updelta.report.findings", "findings"),
         "ReportOutcome": ("updelta.report.write", "ReportOutcome"),
         "check_out_dir": ("updelta.report.write", "check_out_dir"),
         "write_report": ("updelta.report.write", "write_report")}
__all__ = ["write_report", "ReportOutcome", "Finding", "check_out_dir", "compute_findings"]


def __getattr__(name: str):
    """The report's public names, imported on first use: `updelta.report.gates` (the CLI's fast path) does not load
    pandas and matplotlib through this package."""
    if name in _LAZY:
        import importlib  # stdlib: the lazy re-export itself

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'updelta.report' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
