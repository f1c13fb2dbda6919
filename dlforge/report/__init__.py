"""The run report: one self-contained HTML file with embedded figures."""

from typing import TYPE_CHECKING

from dlforge._lazy import lazy_exports

if TYPE_CHECKING:
    from dlforge.report.html import render_report, write_report

__getattr__, __dir__, __all__ = lazy_exports(__name__, {"html": ["render_report", "write_report"]})
