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
from updelta.report.findings import (
    Finding,  # noqa: F401
    findings as compute_findings,  # noqa: F401
)
from updelta.report.write import ReportOutcome, check_out_dir, write_report  # noqa: F401

__all__ = ["write_report", "ReportOutcome", "Finding", "check_out_dir", "compute_findings"]
