"""One self-contained HTML report per run: tables, figures (embedded PNG), recipe, environment."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from dlforge.config import DlforgeError
from dlforge.report import plots
from dlforge.train.checkpoint import atomic_write_text

CSS = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{margin-bottom:.2rem} h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem;display:block;overflow-x:auto}
td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
figure{margin:1rem 0} figcaption{color:#555;font-size:.85rem}
pre{background:#f7f7f7;padding:.8rem;overflow:auto;font-size:.8rem}
.flag{color:#a00;font-weight:600} .muted{color:#666}
"""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"
    return html.escape(str(v))


def _sparsity_speed_note(rows: list[dict[str, Any]]) -> str:
    """The plain statement the report owes about unstructured sparsity, with its numbers."""
    by = {r.get("variant"): r for r in rows}
    base, pruned = by.get("baseline"), by.get("prune")
    text = (
        "Unstructured pruning keeps dense tensor shapes, so dense kernels do the same work: "
        "zeros buy no speed, only bytes once encoded sparsely (Deep Compression)."
    )
    if base and pruned and pruned.get("params"):
        zeros = 1 - pruned["nonzero_params"] / pruned["params"]
        text += (
            f" Measured here: {zeros:.0%} zeros run at {pruned['throughput_x']:.2f}x the "
            f"baseline's ONNX Runtime throughput (batch-1 latency {pruned['latency_p50_ms']:.3g} "
            f"ms against {base['latency_p50_ms']:.3g} ms)."
        )
    return text


def _table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if not rows:
        return "<p class='muted'>none</p>"
    columns = columns or list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_fmt(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _kv_table(d: dict[str, Any]) -> str:
    return _table([{"name": k, "value": v} for k, v in d.items()], ["name", "value"])


def _figure(name: str, png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f"<figure data-figure='{name}'><img alt='{html.escape(caption)}' "
        f"src='data:image/png;base64,{data}'><figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _safe_figure(name: str, draw: Callable[[], bytes], caption: str, notes: list[str]) -> str:
    try:
        return _figure(name, draw(), caption)
    except Exception as exc:  # a figure that cannot be drawn must not sink the report
        notes.append(f"figure '{name}' could not be drawn: {exc}")
        return f"<p class='flag'>figure {html.escape(name)} could not be drawn: {html.escape(str(exc))}</p>"


def _evaluate_section(ev: dict[str, Any], notes: list[str]) -> list[str]:
    """Metrics, per-class table, curves, calibration and clustering."""
    parts: list[str] = []
    parts.append(f"<h2>Metrics ({html.escape(ev['split'])} split, {ev['n_samples']} samples)</h2>")
    parts.append(_kv_table(ev["summary"]))
    parts.append("<h3>Per class</h3>" + _table(ev["per_class"]))
    class_names = [row["class"] for row in ev["per_class"]]
    parts.append(
        _safe_figure(
            "confusion_matrix",
            lambda: plots.confusion_matrix(ev["confusion_matrix"], class_names),
            "Confusion matrix: rows are true classes, columns predictions.",
            notes,
        )
    )
    parts.append(
        _safe_figure(
            "roc",
            lambda: plots.roc_curves(ev["curves"]["roc"]),
            "ROC curves: true-positive rate against false-positive rate.",
            notes,
        )
    )
    parts.append(
        _safe_figure(
            "pr",
            lambda: plots.pr_curves(ev["curves"]["pr"]),
            "Precision-recall curves with average precision.",
            notes,
        )
    )
    parts.append(
        _safe_figure(
            "reliability",
            lambda: plots.reliability_diagram(
                ev["reliability"], ev["summary"]["expected_calibration_error"]
            ),
            "Reliability diagram: accuracy per confidence bin; the gap is miscalibration.",
            notes,
        )
    )
    if "clustering" in ev:
        cl = ev["clustering"]
        parts.append(
            f"<h3>Clustering of {cl['embedding_dim']}-d penultimate embeddings "
            f"into {cl['n_clusters']} clusters</h3>"
        )
        rows = [{"algorithm": a, **s} for a, s in cl.items() if isinstance(s, dict)]
        parts.append(_table(rows))
    return parts


def _train_section(tr: dict[str, Any], notes: list[str]) -> list[str]:
    """Settings, curves, gradient norms, events and the epoch table."""
    parts: list[str] = []
    parts.append("<h2>Training</h2>")
    parts.append(
        _kv_table(
            {
                **tr.get("settings", {}),
                **{f"best {k}": v for k, v in tr.get("best", {}).items()},
            }
        )
    )
    parts.append(
        _safe_figure(
            "training_curves",
            lambda: plots.training_curves(tr),
            "Loss and accuracy per epoch; learning rate per optimizer step.",
            notes,
        )
    )
    if tr.get("grad_norms") and any(tr["grad_norms"]):
        parts.append(
            _safe_figure(
                "gradient_norms",
                lambda: plots.gradient_norms(tr["grad_norms"]),
                "Per-layer gradient L2 norms (mean over sampled steps).",
                notes,
            )
        )
    flagged = [
        f"epoch {i + 1}: {kind} in {', '.join(layers)}"
        for i, flags in enumerate(tr.get("grad_flags", []))
        for kind, layers in flags.items()
        if layers
    ]
    events = tr.get("events", []) + flagged
    parts.append(
        "<h3>Events</h3>"
        + (
            "<ul>" + "".join(f"<li class='flag'>{html.escape(e)}</li>" for e in events) + "</ul>"
            if events
            else "<p class='muted'>no early stop, no non-finite loss, no flagged gradients</p>"
        )
    )
    parts.append("<h3>Epochs</h3>" + _table(tr["epochs"]))
    return parts


def _compress_section(cz: dict[str, Any], notes: list[str]) -> list[str]:
    """Every compression variant beside the baseline."""
    parts: list[str] = []
    parts.append("<h2>Compression (each technique from the same trained model)</h2>")
    parts.append(_table(cz["rows"]))
    parts.append(
        _safe_figure(
            "pareto",
            lambda: plots.pareto(cz["rows"]),
            "Accuracy against bytes stored; the baseline is the uncompressed model.",
            notes,
        )
    )
    parts.append(f"<p>{html.escape(_sparsity_speed_note(cz['rows']))}</p>")
    lines = _compress_notes(cz.get("notes", {}))
    if lines:
        parts.append("<ul>" + "".join(f"<li>{html.escape(t)}</li>" for t in lines) + "</ul>")
    return parts


def _compress_notes(notes: dict[str, Any]) -> list[str]:
    """What each technique's row does not show: what was counted, missed or left out."""
    lines = []
    prune = notes.get("prune", {})
    if prune.get("left_out"):
        lines.append(
            f"Unstructured pruning: {prune['global']:.1%} of the conv/linear weights are zero, "
            f"{prune['all_parameters']:.1%} of all parameters; not pruned: "
            + ", ".join(prune["left_out"])
        )
    st = notes.get("structured", {})
    if "skipped" in st:
        lines.append(f"Structured pruning: no row, {st['skipped']} (kept whole: {st['pinned']})")
    elif st.get("macs_target") is not None:
        lines.append(
            f"Structured pruning removed {st['macs_removed']:.1%} of the MACs "
            f"(target {st['macs_target']:.0%})"
        )
    account = notes.get("deep_compression", {}).get("account")
    if account:
        lines.append(
            f"Deep Compression file: {account['file_bytes']:,} bytes, {account['file_ratio']:.1f}x "
            f"smaller than fp32 weights ({account['fp32_bytes']:,} bytes); the storage account "
            f"without container overhead: {account['account_bytes']:,} bytes "
            f"({account['account_ratio']:.1f}x)"
        )
    return lines


def _quantize_section(qz: dict[str, Any], notes: list[str]) -> list[str]:
    """int8 accuracy and size, the layers quantized, sharing, mixed precision."""
    parts: list[str] = []
    parts.append("<h2>Quantization (int8)</h2>")
    parts.append(
        _kv_table(
            {
                **{f"accuracy: {k}": v for k, v in qz["accuracy"].items()},
                "ONNX Runtime vs fake-quant top-1 agreement": qz[
                    "ort_vs_fake_quant_top1_agreement"
                ],
                "max |logit difference|": qz["ort_vs_fake_quant_max_abs_logit_diff"],
                "file bytes fp32": qz["bytes"]["fp32"],
                "file bytes int8": qz["bytes"]["int8"],
                "int8 / fp32 size": qz["bytes"]["int8"] / qz["bytes"]["fp32"],
            }
        )
    )
    parts.append(
        _kv_table(
            {
                "method": qz.get("method", "ptq"),
                "calibrator used": qz.get("observer", ""),
                "quantized layers": ", ".join(qz["quantized_layers"]) or "none",
                "layers left in float": ", ".join(qz["float_layers"]) or "none",
                "batch norms folded": ", ".join(qz["folded_batch_norms"]) or "none",
                "settings": ", ".join(f"{k}={v}" for k, v in qz["config"].items()),
            }
        )
    )
    if qz.get("observer_search"):
        parts.append("<h3>Calibrator chosen automatically (validation accuracy)</h3>")
        parts.append(_table(qz["observer_search"]))
    cb = qz.get("codebook")
    if cb:
        parts.append(f"<h3>Weight sharing: {cb['bits']}-bit k-means codebooks</h3>")
        parts.append(
            _kv_table(
                {
                    "test accuracy before / after centroid fine-tuning": f"{cb['accuracy_before_fine_tuning']:.4f} / {cb['accuracy']:.4f}",
                    "weight bytes (codebook / fp32)": f"{cb['weight_bytes']:.0f} / {cb['fp32_weight_bytes']:.0f}",
                    "layers": ", ".join(cb["layers"]),
                }
            )
        )
    mp = qz.get("mixed_precision")
    if mp:
        parts.append(
            "<h3>Per-layer weight sensitivity (val split, one layer quantized at a time)</h3>"
        )
        parts.append(_table(mp["sensitivity"]))
        parts.append("<h3>Mixed precision chosen</h3>")
        parts.append(
            _kv_table(
                {
                    "bits per layer": ", ".join(f"{k}: {v}" for k, v in mp["bits"].items()),
                    "val accuracy fp32": mp["baseline_accuracy"],
                    "val accuracy mixed": mp["accuracy"],
                    "test accuracy mixed": mp["test_accuracy"],
                    "weight bytes (mixed / fp32)": f"{mp['weight_bytes']:.0f} / {mp['fp32_weight_bytes']:.0f}",
                }
            )
        )
    return parts


def _bench_section(bench: dict[str, Any], notes: list[str]) -> list[str]:
    """Latency, throughput and accuracy of every variant."""
    parts: list[str] = []
    parts.append(
        f"<h2>Benchmark ({html.escape(str(bench['config'].get('threads')))} threads; "
        f"baseline: {html.escape(bench['baseline'])})</h2>"
    )
    parts.append(_table(bench["rows"]))
    parts.append(
        _safe_figure(
            "tradeoff",
            lambda: plots.tradeoff(bench["rows"]),
            "Accuracy against batch-1 latency for every variant.",
            notes,
        )
    )
    return parts


# The stages' sections, in the order of the run; each reads only its own part of the results.
SECTIONS: list[tuple[str, str, Callable[[dict[str, Any], list[str]], list[str]]]] = [
    ("evaluate", "Metrics", _evaluate_section),
    ("train", "Training", _train_section),
    ("compress", "Compression", _compress_section),
    ("quantize", "Quantization (int8)", _quantize_section),
    ("bench", "Benchmark", _bench_section),
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
    failed = [k for k, _, _ in SECTIONS if isinstance(result.get(k), dict) and "error" in result[k]]
    if failed:
        parts.append(
            f"<p class='flag'>Stage '{html.escape(failed[0])}' failed; the stages after it did "
            "not run. Its error is in its section below.</p>"
        )
    for key, title, draw in SECTIONS:
        parts += _section(key, title, draw, result, notes)
    if "data" in result:
        parts.append("<h2>Data</h2>" + _kv_table(result["data"]))
    if "model" in result:
        parts.append("<h2>Model</h2>" + _kv_table(result["model"]))
    if "timings" in result:
        parts.append("<h2>Timings (s)</h2>" + _kv_table(result["timings"]))
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
