"""Helpers shared by the benchmark scripts: timing, medians, a markdown table."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dlforge.environment import environment
from dlforge.train.checkpoint import atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def median(values: list[float]) -> float:
    return statistics.median(values)


def table(rows: list[dict[str, Any]]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        values = [r.get(c, "") for c in cols]  # a short row leaves its missing cells empty
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in values]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save(name: str, payload: dict[str, Any]) -> Path:
    """Write the raw numbers next to the scripts, with the machine they came from."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    return atomic_write_json(path, {**payload, "environment": environment()})
