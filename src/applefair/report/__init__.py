"""Human-readable outputs: tables and the markdown report."""

from applefair.report.markdown import before_after_rows, demo_report

__all__ = ["before_after_rows", "demo_report"]
