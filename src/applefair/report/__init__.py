"""Human-readable outputs: report.html, report.md, tables as CSV, plots."""


def write_reports(run_dir, overlays: bool = True):
    """Write report.html, report.md, tables/*.csv and plots/* for a run folder (see report.build)."""
    from applefair.report.build import write_reports as _write

    return _write(run_dir, overlays=overlays)


__all__ = ["write_reports"]
