"""One self-contained HTML report per run: tables, figures (embedded PNG), recipe, environment."""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from dlforge.config import DlforgeError
from dlforge.report import sections
from dlforge.report.tables import kv_table
from dlforge.train.checkpoint import atomic_write_text

CSS = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1200px;color:#222;padding:0 1rem}
h1{margin-bottom:.2rem} h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
.table{overflow-x:auto;margin:.5rem 0}
table{border-collapse:collapse;font-size:.85rem;font-variant-numeric:tabular-nums}
td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:right}
th{background:#f3f3f3;vertical-align:bottom;max-width:9rem}
td:first-child,th:first-child{text-align:left}
figure{margin:1rem 0} figcaption{color:#555;font-size:.85rem} img{max-width:100%}
pre{background:#f7f7f7;padding:.8rem;overflow:auto;font-size:.8rem}
.flag{color:#a00;font-weight:600} .muted{color:#666}
"""


def _sections() -> list[tuple[str, str, Callable[[dict[str, Any], list[str]], list[str]]]]:
    """Every section in the order of the run: metrics, training, then each later stage."""
    from dlforge.stages import STAGES

    evaluate, *later = STAGES
    return [
        (evaluate.name, evaluate.title, evaluate.report),
        ("train", "Training", sections.train_section),
        *((s.name, s.title, s.report) for s in later),
    ]


def _failure(title: str, error: dict[str, Any]) -> str:
    return (
        f"<h2>{html.escape(title)}: failed</h2><p class='flag'>"
        f"{html.escape(str(error.get('type', 'error')))}: {html.escape(str(error.get('message')))}"
        "</p><p class='muted'>The stages before this one completed; their results are above.</p>"
    )


def _section(key: str, title: str, draw: Callable[..., list[str]], result: dict[str, Any],
             notes: list[str]) -> list[str]:  # fmt: skip
    part = result.get(key)
    if not isinstance(part, dict) or not part:
        return []
    if isinstance(part.get("error"), dict):
        # A failed training still has its epochs so far: show them below the error.
        shown = [_failure(title, part["error"])]
        return shown + (_safe_section(key, draw, part, notes) if key == "train" else [])
    return _safe_section(key, draw, part, notes)


def _safe_section(
    key: str, draw: Callable[..., list[str]], part: dict[str, Any], notes: list[str]
) -> list[str]:
    try:
        return draw(part, notes)
    except Exception as exc:  # a malformed section must not sink the rest of the report
        notes.append(f"section '{key}' could not be rendered: {type(exc).__name__}: {exc}")
        return [f"<p class='flag'>section {html.escape(key)} could not be rendered</p>"]


def render_report(result: dict[str, Any]) -> str:
    """HTML for a run's ``metrics.json`` content."""
    notes: list[str] = []
    recipe = result.get("recipe") if isinstance(result.get("recipe"), dict) else {}
    name = str(recipe.get("name", "run"))  # type: ignore[union-attr]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>dlforge report: "
        f"{html.escape(name)}</title><style>{CSS}</style></head><body>",
        f"<h1>dlforge report: {html.escape(name)}</h1>",
        f"<p class='muted'>created {html.escape(str(result.get('created', '')))}</p>",
    ]
    order = _sections()
    failed = [k for k, _, _ in order if isinstance(result.get(k), dict) and "error" in result[k]]
    if failed:
        parts.append(
            f"<p class='flag'>Stage '{html.escape(failed[0])}' failed; the stages after it did "
            "not run. Its error is in its section below.</p>"
        )
    for key, title, draw in order:
        parts += _section(key, title, draw, result, notes)
    if "data" in result:
        parts.append("<h2>Data</h2>" + kv_table(result["data"]))
    if "model" in result:
        parts.append("<h2>Model</h2>" + kv_table(result["model"]))
    if "timings" in result:
        parts.append("<h2>Timings (s)</h2>" + kv_table(result["timings"]))
    parts.append(
        "<h2>Resolved recipe</h2><pre>"
        + html.escape(yaml.safe_dump(result.get("recipe", {}), sort_keys=False))
        + "</pre>"
    )
    parts.append(
        "<h2>Environment</h2><pre>"
        + html.escape(json.dumps(result.get("environment", {}), indent=2))
        + "</pre>"
    )
    if notes:
        parts.append(
            "<h2>Report notes</h2><ul>"
            + "".join(f"<li>{html.escape(n)}</li>" for n in notes)
            + "</ul>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run_dir: str | Path) -> Path:
    """Render ``run_dir``/metrics.json into ``run_dir``/report.html (atomically)."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.json"
    if not metrics.is_file():
        raise DlforgeError(f"no metrics.json in {run_dir}: is it a dlforge run folder?")
    try:
        result = json.loads(metrics.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DlforgeError(f"{metrics} is not readable JSON ({exc})") from None
    if not isinstance(result, dict):
        raise DlforgeError(f"{metrics} must hold a JSON object, got {type(result).__name__}")
    return atomic_write_text(run_dir / "report.html", render_report(result))
