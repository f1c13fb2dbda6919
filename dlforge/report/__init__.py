"""The run report: one self-contained HTML file with embedded figures."""

from dlforge.report.html import render_report, write_report

__all__ = ["render_report", "write_report"]
