"""Result tables as a paper prints them: labelled columns with units, 3-4 significant digits,
the baseline row first, ratios beside the figures they compare. HTML for the report, plain text
for the terminal. No torch, no matplotlib: the CLI's summaries use this too.
"""

from __future__ import annotations

import html
import math
from typing import Any

# raw key -> column heading (with its unit)
LABELS: dict[str, str] = {
    "variant": "variant",
    "accuracy": "accuracy",
    "accuracy_drop_points": "Δ accuracy (points)",
    "drop_points": "Δ accuracy (points)",
    "params": "parameters",
    "nonzero_params": "non-zero",
    "macs": "MACs",
    "onnx_bytes": "ONNX (bytes)",
    "stored_bytes": "stored (bytes)",
    "file_bytes": "file (bytes)",
    "compression_x": "smaller ×",
    "latency_p50_ms": "latency p50 (ms)",
    "latency_p90_ms": "latency p90 (ms)",
    "latency_p99_ms": "latency p99 (ms)",
    "latency_calls": "calls timed",
    "throughput_b64": "throughput (samples/s)",
    "throughput_x": "throughput ×",
    "latency_x": "latency ×",
    "size_x": "size ×",
    "peak_rss_mib": "peak RSS (MiB)",
    "threads": "threads",
    "file_mb": "file (MB)",
    "ece": "ECE",
    "expected_calibration_error": "ECE",
    "log_loss": "log-loss",
    "f1_macro": "macro F1",
    "epoch": "epoch",
    "train_loss": "train loss",
    "train_accuracy": "train accuracy",
    "val_loss": "val loss",
    "val_accuracy": "val accuracy",
    "lr": "learning rate",
    "samples_per_s": "samples/s",
    "epoch_time_s": "epoch (s)",
    "clean_accuracy": "clean accuracy",
    "pgd_accuracy": "PGD accuracy",
    "transfer_accuracy": "transfer accuracy",
    "square_accuracy": "Square accuracy",
    "median_distance": "median L2 distance",
    "found": "share found",
}
# The benchmark table, in the report and the terminal: accuracy, latency, throughput and size,
# each ratio beside the figure it compares.
BENCH_COLUMNS = ["variant", "precision", "accuracy", "latency_p50_ms", "latency_p99_ms", "latency_calls",
                 "throughput_b64", "throughput_x", "file_bytes", "size_x", "note"]  # fmt: skip
# Columns that say nothing when every row has the same value (peak RSS is the process's).
DROP_WHEN_CONSTANT = {"peak_rss_mib", "threads", "params"}


def label(key: str) -> str:
    return LABELS.get(key, key.replace("_", " "))


def fmt(value: Any) -> str:
    """Numbers with 3-4 significant digits (integers whole, with thousands separators)."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if value != 0 and abs(value) >= 1e4:
            return f"{value:,.0f}"
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.2e}"
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(fmt(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {fmt(v)}" for k, v in value.items())
    return str(value)


def columns_of(rows: list[dict[str, Any]], columns: list[str] | None = None) -> list[str]:
    """The columns to show: the given ones present in the rows, else every key; constant
    columns from ``DROP_WHEN_CONSTANT`` left out."""
    keys = columns or list(dict.fromkeys(k for r in rows for k in r))
    keys = [k for k in keys if any(k in r for r in rows)]
    return [
        k for k in keys if not (k in DROP_WHEN_CONSTANT and len({str(r.get(k)) for r in rows}) == 1)
    ]


def html_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if not rows:
        return "<p class='muted'>none</p>"
    cols = columns_of(rows, columns)
    head = "".join(f"<th>{html.escape(label(c))}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(fmt(r.get(c)))}</td>" for c in cols) + "</tr>"
        for r in rows
    )
    return f"<div class='table'><table><tr>{head}</tr>{body}</table></div>"


def kv_table(d: dict[str, Any]) -> str:
    rows = [{"name": k.replace("_", " "), "value": fmt(v)} for k, v in d.items()]
    return html_table(rows, ["name", "value"])


def text_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> list[str]:
    """Aligned plain-text lines for the terminal."""
    if not rows:
        return []
    cols = columns_of(rows, columns)
    cells = [[label(c) for c in cols]] + [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]

    def line(row: list[str]) -> str:
        return "  ".join(
            v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))
        ).rstrip()

    return [line(cells[0]), *(line(r) for r in cells[1:])]
