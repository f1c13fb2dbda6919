"""The report's sections, one per stage: tables as a paper prints them and embedded figures.

Each function takes its stage's part of ``metrics.json`` (and a list to add notes to when a
figure cannot be drawn) and returns HTML parts; the stages' ``report`` methods call them.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable
from typing import Any

from dlforge.report import plots
from dlforge.report.tables import BENCH_COLUMNS, fmt, html_table, kv_table

COMPRESS_COLUMNS = ["variant", "accuracy", "accuracy_drop_points", "pgd_accuracy",
                    "transfer_accuracy", "params", "nonzero_params", "macs", "stored_bytes",
                    "compression_x", "latency_p50_ms", "throughput_b64", "throughput_x"]  # fmt: skip
QUANT_ROBUST_COLUMNS = ["variant", "clean_accuracy", "pgd_accuracy", "transfer_accuracy",
                        "square_accuracy"]  # fmt: skip
EPOCH_COLUMNS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr",
                 "samples_per_s", "epoch_time_s", "skipped_batches"]  # fmt: skip
INFO_EVENTS = ("resumed", "nothing to resume")  # events that are news, not trouble


def _num(value: Any) -> str:
    """A budget or bound as written in prose: 0.1, 1, 8.5e-05; '?' when missing."""
    return f"{value:g}" if isinstance(value, int | float) else "?"


def _event_class(event: str) -> str:
    return "muted" if event.startswith(INFO_EVENTS) else "flag"


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


def figure(name: str, png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f"<figure data-figure='{name}'><img alt='{html.escape(caption)}' "
        f"src='data:image/png;base64,{data}'><figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def safe_figure(name: str, draw: Callable[[], bytes], caption: str, notes: list[str]) -> str:
    try:
        return figure(name, draw(), caption)
    except Exception as exc:  # a figure that cannot be drawn must not sink the report
        notes.append(f"figure '{name}' could not be drawn: {exc}")
        return f"<p class='flag'>figure {html.escape(name)} could not be drawn: {html.escape(str(exc))}</p>"


def evaluate_section(ev: dict[str, Any], notes: list[str]) -> list[str]:
    """Metrics, per-class table, curves, calibration and clustering."""
    parts: list[str] = []
    parts.append(f"<h2>Metrics ({html.escape(ev['split'])} split, {ev['n_samples']} samples)</h2>")
    parts.append(kv_table(ev["summary"]))
    if "decision" in ev:  # what the deployed model predicts
        parts.append(
            "<h3>At the decision threshold chosen on the validation split</h3>"
            + kv_table(ev["decision"])
        )
    parts.append("<h3>Per class</h3>" + html_table(ev["per_class"]))
    class_names = [row["class"] for row in ev["per_class"]]
    imb = ev.get("imbalance")
    if imb and (imb["imbalance_ratio"] >= 1.5 or "sampled_counts" in imb):
        groups = {k: imb.get(f"{k}_recall") for k in ("head", "medium", "tail")}
        parts.append(
            f"<p>Training classes {imb['imbalance_ratio']:.3g}:1 (largest to smallest); recall "
            + ", ".join(f"{k} {v:.3f}" for k, v in groups.items() if v is not None)
            + f"; geometric mean of recalls {imb['geometric_mean']:.3f}.</p>"
        )
        parts.append(
            safe_figure(
                "class_balance",
                lambda: plots.class_balance(imb, class_names),
                "Training samples per class, as read and as the sampler (or SMOTE) feeds them "
                "to training; test recall per class.",
                notes,
            )
        )
    parts.append(
        safe_figure(
            "confusion_matrix",
            lambda: plots.confusion_matrix(ev["confusion_matrix"], class_names),
            "Confusion matrix: rows are true classes, columns predictions.",
            notes,
        )
    )
    parts.append(
        safe_figure(
            "roc",
            lambda: plots.roc_curves(ev["curves"]["roc"]),
            "ROC curves: true-positive rate against false-positive rate.",
            notes,
        )
    )
    parts.append(
        safe_figure(
            "pr",
            lambda: plots.pr_curves(ev["curves"]["pr"]),
            "Precision-recall curves with average precision.",
            notes,
        )
    )
    parts.append(
        safe_figure(
            "reliability",
            lambda: plots.reliability_diagram(
                ev["reliability"], ev["summary"]["expected_calibration_error"]
            ),
            "Reliability diagram: accuracy per confidence bin; the gap is miscalibration.",
            notes,
        )
    )
    if ev.get("attention"):
        parts.append(
            safe_figure(
                "attention",
                lambda: plots.attention_maps(ev["attention"]),
                f"Attention of layer {ev['attention']['layer']} for the first test samples "
                "(averaged over heads): each row is a query, each column the key it attends to; "
                "for attention pooling, the weight of each step over the input.",
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
        parts.append(html_table(rows))
    return parts


def train_section(tr: dict[str, Any], notes: list[str]) -> list[str]:
    """Settings, curves, gradient norms, events and the epoch table."""
    parts: list[str] = []
    parts.append("<h2>Training</h2>")
    parts.append(
        kv_table(
            {
                **tr.get("settings", {}),
                **{f"best {k}": v for k, v in tr.get("best", {}).items()},
            }
        )
    )
    parts.append(
        safe_figure(
            "training_curves",
            lambda: plots.training_curves(tr),
            "Loss and accuracy per epoch; learning rate per optimizer step.",
            notes,
        )
    )
    if tr.get("grad_norms") and any(tr["grad_norms"]):
        parts.append(
            safe_figure(
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
            "<ul>"
            + "".join(f"<li class='{_event_class(e)}'>{html.escape(e)}</li>" for e in events)
            + "</ul>"
            if events
            else "<p class='muted'>no early stop, no non-finite loss, no flagged gradients</p>"
        )
    )
    parts.append("<h3>Epochs</h3>" + html_table(tr["epochs"], EPOCH_COLUMNS))
    return parts


def compress_section(title: str, cz: dict[str, Any], notes: list[str]) -> list[str]:
    """Every compression variant beside the baseline."""
    parts: list[str] = []
    parts.append(f"<h2>{html.escape(title)}</h2>")
    parts.append(html_table(cz["rows"], COMPRESS_COLUMNS))
    rb = cz.get("robust")
    if rb:
        parts.append(
            f"<p class='muted'>Robust accuracy under PGD-{rb.get('steps', '?')} L∞ at "
            f"ε={_num(rb.get('eps'))} (input units) on {rb.get('samples', '?')} test samples: "
            "white-box on each variant's own gradients, and transfer from the uncompressed "
            "baseline.</p>"
        )
    parts.append(
        safe_figure(
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
    if notes.get("fine_tuning"):
        lines.append(f"Fine-tuning of the variants: {notes['fine_tuning']}")
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
    for technique, layers in notes.get("left_as_is", {}).items():
        lines.append(f"{technique}: left as it is (skip_unsupported): " + _reasons(layers))
    if notes.get("lowrank", {}).get("left"):
        lines.append("Low-rank: not factorised: " + _reasons(notes["lowrank"]["left"]))
    if notes.get("deep_compression", {}).get("dense"):
        lines.append("Deep Compression: " + _reasons(notes["deep_compression"]["dense"]))
    account = notes.get("deep_compression", {}).get("account")
    if account:
        lines.append(
            f"Deep Compression file: {account['file_bytes']:,} bytes, {account['file_ratio']:.1f}x "
            f"smaller than fp32 weights ({account['fp32_bytes']:,} bytes); the storage account "
            f"without container overhead: {account['account_bytes']:,} bytes "
            f"({account['account_ratio']:.1f}x)"
        )
    return lines


def _ops(counts: dict[str, int]) -> str:
    return ", ".join(f"{op} x{n}" for op, n in sorted(counts.items())) or "-"


def _reasons(layers: dict[str, str]) -> str:
    return "; ".join(f"{name} ({why})" for name, why in layers.items())


def quantize_section(title: str, qz: dict[str, Any], notes: list[str]) -> list[str]:
    """int8 accuracy and size, the layers quantized, sharing, mixed precision."""
    parts: list[str] = []
    parts.append(f"<h2>{html.escape(title)}</h2>")
    parts.append(
        kv_table(
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
        kv_table(
            {
                "method": qz.get("method", "ptq"),
                "calibrator used": qz.get("observer", ""),
                "quantized layers": ", ".join(qz["quantized_layers"]) or "none",
                "layers left in float": _reasons(qz.get("float_reasons", {}))
                or ", ".join(qz["float_layers"])
                or "none",
                "ONNX Runtime kernels, int8": _ops(qz.get("kernels", {}).get("int8", {})),
                "ONNX Runtime kernels, float": _ops(qz.get("kernels", {}).get("float", {})),
                "batch norms folded": ", ".join(qz["folded_batch_norms"]) or "none",
                "settings": ", ".join(f"{k}={v}" for k, v in qz["config"].items()),
            }
        )
    )
    if qz.get("observer_search"):
        parts.append("<h3>Calibrator chosen automatically (validation accuracy)</h3>")
        parts.append(html_table(qz["observer_search"]))
    cb = qz.get("codebook")
    if cb:
        parts.append(f"<h3>Weight sharing: {cb['bits']}-bit k-means codebooks</h3>")
        parts.append(
            kv_table(
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
        parts.append(html_table(mp["sensitivity"]))
        parts.append("<h3>Mixed precision chosen</h3>")
        parts.append(
            kv_table(
                {
                    "bits per layer": ", ".join(f"{k}: {v}" for k, v in mp["bits"].items()),
                    "val accuracy fp32": mp["baseline_accuracy"],
                    "val accuracy mixed": mp["accuracy"],
                    "test accuracy mixed": mp["test_accuracy"],
                    "weight bytes (mixed / fp32)": f"{mp['weight_bytes']:.0f} / {mp['fp32_weight_bytes']:.0f}",
                }
            )
        )
    rb = qz.get("robust")
    if rb:
        parts.append("<h3>Robustness of the int8 model</h3>")
        square = rb.get("square_queries")
        parts.append(
            f"<p>Accuracy on {rb.get('samples', '?')} test samples under L∞ attacks at "
            f"ε={_num(rb.get('eps'))} (input units): white-box PGD-{rb.get('steps', '?')} where "
            "gradients exist (PyTorch); ONNX Runtime has none, so its models meet adversarial "
            "inputs transferred from the fp32 PyTorch model and the black-box Square attack"
            + (f" ({square:,} queries)" if isinstance(square, int) else "")
            + ".</p>"
        )
        parts.append(html_table(rb.get("rows", []), QUANT_ROBUST_COLUMNS))
    return parts


def bench_section(title: str, bench: dict[str, Any], notes: list[str]) -> list[str]:
    """Latency, throughput and accuracy of every variant."""
    parts: list[str] = []
    parts.append(
        f"<h2>{html.escape(title)} ({html.escape(str(bench['config'].get('threads')))} threads; "
        f"baseline: {html.escape(bench['baseline'])})</h2>"
    )
    parts.append(html_table(bench["rows"], BENCH_COLUMNS))
    best = bench.get("fastest")
    if best:
        parts.append(
            f"<p><b>Fastest within {best['tolerance']:.3g} accuracy of eager fp32:</b> "
            f"{html.escape(best['variant'])}: {best['throughput']:,.0f} samples/s "
            f"({best['throughput_x']:.2f}x eager fp32), accuracy {best['accuracy']:.4f}.</p>"
        )
    parts.append(
        safe_figure(
            "tradeoff",
            lambda: plots.tradeoff(bench["rows"]),
            "Accuracy against batch-1 latency for every variant.",
            notes,
        )
    )
    return parts


def crossval_section(title: str, cv: dict[str, Any], notes: list[str]) -> list[str]:
    """Per-fold metrics, their mean ± sd, and the single split's estimate beside them."""
    del notes
    parts = [f"<h2>{html.escape(title)}: {len(cv['folds'])} folds ({html.escape(cv['kind'])})</h2>"]
    rows = []
    for key, s in cv["summary"].items():
        rows.append({"metric": key.replace("_", " "), "mean": s["mean"], "sd": s["std"],
                     "min": s["min"], "max": s["max"],
                     "single split": cv.get("single_split", {}).get(key)})  # fmt: skip
    parts.append(html_table(rows))
    folds = [
        {"fold": f["fold"], **({"error": f"{f['error']['type']}: {f['error']['message']}"}
                               if "error" in f else {k: f.get(k) for k in
                               ("accuracy", "f1_macro", "log_loss", "epochs")})}
        for f in cv["folds"]
    ]  # fmt: skip
    parts.append("<h3>Folds</h3>" + html_table(folds))
    return parts


def ensemble_section(title: str, ens: dict[str, Any], notes: list[str]) -> list[str]:
    """The single model, each member and the ensemble; the ensemble's speed on ONNX Runtime."""
    del notes
    parts = [
        f"<h2>{html.escape(title)}: {html.escape(ens['kind'])}, {html.escape(ens['voting'])} "
        "voting</h2>",
        html_table(ens["rows"], ["variant", "accuracy", "expected_calibration_error", "log_loss"]),
        f"<p>The ensemble scores {ens['gain_points']:+.2f} points against its mean member.</p>",
    ]
    if ens.get("speed"):
        parts.append("<h3>Cost on ONNX Runtime (one graph for all members)</h3>")
        parts.append(html_table(ens["speed"], ["variant", "latency_p50_ms", "latency_x",
                                               "throughput_b64", "throughput_x", "file_bytes",
                                               "size_x"]))  # fmt: skip
    return parts


SERVE_COLUMNS = ["mode", "concurrency", "rps", "rps_x", "p50_ms", "p90_ms", "p99_ms", "ok",
                 "statuses"]  # fmt: skip


def serve_section(title: str, serve: dict[str, Any], notes: list[str]) -> list[str]:
    """The load test: each serving mode at each concurrency, and latency against throughput."""
    parts = [f"<h2>{html.escape(title)}</h2>"]
    s = serve.get("settings", {})
    parts.append(
        f"<p>{html.escape(str(s.get('backend')))} {html.escape(str(s.get('precision')))}, "
        f"{s.get('requests')} requests or {s.get('duration_s')} s per point, client and server "
        "on this machine. Batch-1 serves each request on its own; dynamic batching joins "
        f"requests for up to {s.get('max_wait_ms')} ms into batches of at most "
        f"{s.get('max_batch_size')}.</p>"
    )
    rows = [{**r, "statuses": ", ".join(f"{k}: {v}" for k, v in r["statuses"].items())}
            for r in serve["rows"]]  # fmt: skip
    parts.append(html_table(rows, SERVE_COLUMNS))
    parts.append(
        safe_figure(
            "latency_throughput",
            lambda: plots.latency_throughput(serve["rows"]),
            "Latency (p50 solid, p99 dashed) against answered requests per second.",
            notes,
        )
    )
    return parts


def _range_text(space: dict[str, Any]) -> str:
    lo, hi = space.get("lo"), space.get("hi")
    if lo is None and hi is None:
        return "unbounded (no valid range: perturbed inputs are not clipped)"
    return f"[{_num(lo) if lo is not None else '−∞'}, {_num(hi) if hi is not None else '∞'}]"


def _attack_settings_text(settings: dict[str, Any], attacks: set[str]) -> str:
    """The settings of the attacks that ran, in words."""
    parts = []
    if attacks & {"pgd", "pgd_l2"} and "steps" in settings:
        restarts = settings.get("restarts", 1)
        parts.append(f"PGD {settings['steps']} steps, {restarts} "
                     f"restart{'s' if restarts != 1 else ''}")  # fmt: skip
    if "cw" in attacks and "cw_steps" in settings:
        parts.append(f"CW-L2 {settings['cw_steps']} steps")
    if "square" in attacks and "square_queries" in settings:
        parts.append(f"Square {settings['square_queries']:,} queries")
    return "; ".join(parts)


def _sanity_table(checks: list[dict[str, Any]], large: dict[str, Any] | None) -> str:
    """The gradient-masking checks: each one's name, pass or FAIL (in red) and detail; the
    accuracy at a large budget as the last row."""
    rows = []
    for c in checks:
        passed = bool(c.get("passed"))
        result = "<td>pass</td>" if passed else "<td class='flag'>FAIL</td>"
        rows.append(f"<tr><td>{html.escape(str(c.get('check', '')))}</td>{result}"
                    f"<td>{html.escape(str(c.get('detail', '')))}</td></tr>")  # fmt: skip
    if large and "accuracy" in large:
        rows.append(
            f"<tr><td>PGD L∞ accuracy at a large ε={html.escape(_num(large.get('eps')))}</td>"
            f"<td>{html.escape(fmt(float(large['accuracy'])))}</td>"
            "<td>should be near zero; accuracy that stays high here suggests gradient masking"
            "</td></tr>"
        )
    if not rows:
        return "<p class='muted'>none</p>"
    head = "<tr><th>check</th><th>result</th><th>detail</th></tr>"
    return f"<div class='table'><table>{head}{''.join(rows)}</table></div>"


def _is_image(example: dict[str, Any]) -> bool:
    """Whether an example's input nests three deep (C, H, W) rather than a signal's (C, L)."""
    depth, x = 0, example.get("clean")
    while isinstance(x, list) and x:
        depth, x = depth + 1, x[0]
    return depth == 3


def robust_section(title: str, result: dict[str, Any], notes: list[str]) -> list[str]:
    """Robust accuracy against the budget per attack, the gradient-masking sanity checks,
    the minimal attacks' distances, common corruptions and clean/adversarial pairs."""
    parts = [f"<h2>{html.escape(title)}</h2>"]
    curves: dict[str, Any] = result.get("curves") or {}
    space: dict[str, Any] = result.get("space") or {}
    clean = result.get("clean_accuracy")
    units = (
        "in input units before normalisation"
        if space.get("normalised")
        else "in the model's input units"
    )
    text = (
        f"Clean accuracy {fmt(clean)} on {result.get('samples', '?')} test samples."
        if isinstance(clean, int | float)
        else f"{result.get('samples', '?')} test samples."
    )
    text += f" Budgets ε are {units}; valid range {_range_text(space)}."
    settings = _attack_settings_text(result.get("settings") or {}, set(curves))
    if settings:
        text += f" Attacks: {settings}."
    parts.append(f"<p>{html.escape(text)}</p>")
    if curves:
        norms = {c.get("norm") for c in curves.values()}
        panels = ("L∞ attacks (left) and L2 attacks (right)" if {"linf", "l2"} <= norms
                  else "L∞ attacks" if "linf" in norms else "L2 attacks")  # fmt: skip
        parts.append(
            safe_figure(
                "robustness_curves",
                lambda: plots.robustness_curves(curves, clean),
                f"Robust accuracy against the budget ε: {panels}, one line per attack; the "
                "star is the clean accuracy at ε = 0.",
                notes,
            )
        )
    else:
        parts.append("<p class='muted'>no attack curves</p>")
    if result.get("sanity") or result.get("large_eps"):
        parts.append(
            "<h3>Sanity checks against gradient masking</h3>"
            + _sanity_table(result.get("sanity") or [], result.get("large_eps"))
        )
    minimal = [
        {"attack": plots.attack_name(k), "median_distance": c.get("median_distance"),
         "found": c.get("found")}
        for k, c in curves.items() if "median_distance" in c or "found" in c
    ]  # fmt: skip
    if minimal:
        for row in minimal:
            if row["median_distance"] is None:
                row["median_distance"] = "none found"
        parts.append(
            "<h3>Minimal attacks</h3>"
            + html_table(minimal, ["attack", "median_distance", "found"])
            + "<p class='muted'>Median L2 distance (input units) of the adversarial inputs "
            "found, and the share of samples for which one was found.</p>"
        )
    corruptions = result.get("corruptions")
    if corruptions:
        parts.append(
            safe_figure(
                "corruption_curves",
                lambda: plots.corruption_curves(corruptions),
                "Accuracy under common corruptions at severities 1-5 (0 is the clean input).",
                notes,
            )
        )
    examples = result.get("examples") or []
    if examples:
        lo, hi = space.get("lo"), space.get("hi")
        style = "clean left, adversarial right" if _is_image(examples[0]) else "adversarial dashed"
        parts.append(
            safe_figure(
                "adversarial_examples",
                lambda: plots.adversarial_examples(examples, lo, hi),
                "Test inputs the model gets right and their PGD L∞ adversarial versions at "
                f"ε={_num(result.get('compare_eps'))} ({style}); titles read "
                "'label: clean prediction → adversarial prediction'.",
                notes,
            )
        )
    return parts
