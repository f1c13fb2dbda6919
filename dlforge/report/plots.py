"""The report's figures, drawn with matplotlib (Agg) and returned as PNG bytes."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display; set before pyplot is imported
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure


def _bytes_label(value: float, _pos: int) -> str:
    for unit, size in (("MB", 1e6), ("kB", 1e3)):
        if value >= size:
            return f"{value / size:g} {unit}"
    return f"{value:g} B"


def _accuracy_axis(ax: Any, values: list[float]) -> None:
    """Accuracy axes end at 1, with a little room below the lowest point."""
    if values:
        low = min(values)
        ax.set_ylim(max(0.0, low - 0.05 * max(1 - low, 0.02)), 1.0)


def to_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def training_curves(history: dict[str, Any]) -> bytes:
    """Loss and accuracy per epoch (train and validation), and the LR at every step."""
    epochs = history["epochs"]
    x = [e["epoch"] for e in epochs]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for ax, key in zip(axes[:2], ("loss", "accuracy")):
        for split in ("train", "val"):
            values = [e.get(f"{split}_{key}") for e in epochs]
            if any(v is not None for v in values):
                ax.plot(x, values, marker="o", ms=3, label=split)
        ax.set(xlabel="epoch", ylabel=key, title=key)
        if key == "accuracy":
            ax.set_ylim(top=1.0)
        ax.grid(alpha=0.3)
        ax.legend()
    lrs = history["steps"]["lr"]
    axes[2].plot(np.arange(len(lrs)), lrs)
    axes[2].set(xlabel="optimizer step", ylabel="learning rate", title="learning rate")
    axes[2].grid(alpha=0.3)
    return to_png(fig)


def confusion_matrix(cm: list[list[int]], class_names: list[str]) -> bytes:
    m = np.asarray(cm)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.5 * k, 0.8 + 0.5 * k))
    ax.imshow(m, cmap="Blues")
    ax.set(
        xticks=range(k),
        yticks=range(k),
        xlabel="predicted",
        ylabel="true",
        title="confusion matrix",
    )
    ax.set_xticklabels(class_names, rotation=90 if k > 10 else 0)
    ax.set_yticklabels(class_names)
    if k <= 20:
        threshold = m.max() / 2 if m.size else 0
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    str(m[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if m[i, j] > threshold else "black",
                )
    return to_png(fig)


def _curve_panel(title: str, xlabel: str, ylabel: str) -> tuple[Figure, Any]:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, xlim=(0, 1), ylim=(0, 1))
    ax.margins(0)
    ax.grid(alpha=0.3)
    return fig, ax


def roc_curves(roc: dict[str, Any]) -> bytes:
    """One-vs-rest ROC: true-positive rate against false-positive rate, per class."""
    fig, ax = _curve_panel("ROC (one-vs-rest)", "false-positive rate", "true-positive rate")
    for name, c in roc.items():
        ax.plot(c["fpr"], c["tpr"], lw=1.2, label=f"{name} (AUC {c['auc']:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance")
    ax.legend(fontsize=7, loc="lower right")
    return to_png(fig)


def pr_curves(pr: dict[str, Any]) -> bytes:
    """One-vs-rest precision-recall curves, drawn as steps (AP is the area under the steps)."""
    fig, ax = _curve_panel("precision-recall (one-vs-rest)", "recall", "precision")
    for name, c in pr.items():
        label = f"{name} (AP {c['ap']:.3f})"
        ax.step(c["recall"], c["precision"], where="post", lw=1.2, label=label)
    ax.legend(fontsize=7, loc="lower left")
    return to_png(fig)


def reliability_diagram(rel: dict[str, Any], ece: float) -> bytes:
    edges = np.asarray(rel["edges"])
    centers = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    count = np.asarray(rel["count"])
    used = count > 0
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(5.5, 6), height_ratios=[3, 1], sharex=True)
    ax.bar(
        centers[used],
        np.asarray(rel["accuracy"])[used],
        width=width,
        edgecolor="k",
        alpha=0.8,
        label="accuracy",
    )
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
    ax.set(ylabel="accuracy", title=f"reliability diagram (ECE {ece:.4f})", ylim=(0, 1))
    ax.legend(loc="upper left")
    ax2.bar(centers, count, width=width, edgecolor="k", color="gray")
    ax2.set(xlabel="confidence (top-1 probability)", ylabel="samples", xlim=(0, 1))
    return to_png(fig)


def gradient_norms(grad_norms: list[dict[str, float]]) -> bytes:
    """Per-layer gradient norm per epoch, as a heat map on a log scale."""
    layers = list(grad_norms[-1]) if grad_norms and grad_norms[-1] else []
    for epoch in grad_norms:
        layers += [name for name in epoch if name not in layers]
    m = np.array([[e.get(name, np.nan) for e in grad_norms] for name in layers], dtype=float)
    fig, ax = plt.subplots(figsize=(8, 1.5 + 0.22 * max(len(layers), 1)))
    if m.size:
        im = ax.imshow(np.log10(np.maximum(m, 1e-30)), aspect="auto", cmap="viridis")
        bar = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
        bar.set_label("log10 gradient norm", fontsize=8)  # short: a long label was clipped
        bar.ax.tick_params(labelsize=7)
        ax.set_yticks(range(len(layers)))
        ax.set_yticklabels(layers, fontsize=7)
        ax.set_xticks(range(len(grad_norms)))
        ax.set_xticklabels([str(i + 1) for i in range(len(grad_norms))], fontsize=7)
    ax.set(xlabel="epoch", title="per-layer gradient norms")
    return to_png(fig)


def tradeoff(rows: list[dict[str, Any]]) -> bytes:
    """Accuracy against batch-1 latency; marker area grows with the file size on disk."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sizes = [r.get("file_bytes") or 0 for r in rows]
    biggest = max(sizes) or 1
    for r, size in zip(rows, sizes):
        area = 40 + 400 * size / biggest if size else 40
        ax.scatter(
            r["latency_p50_ms"],
            r["accuracy"],
            s=area,
            alpha=0.7,
            marker="o" if size else "s",
            label=r["variant"],
        )
    ax.set(
        xlabel="latency at batch 1, p50 (ms)",
        ylabel="test accuracy",
        title="accuracy vs latency (marker area: file size; squares: no file)",
    )
    _accuracy_axis(ax, [r["accuracy"] for r in rows if r.get("accuracy") is not None])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return to_png(fig)


def pareto(rows: list[dict[str, Any]]) -> bytes:
    """Accuracy against bytes stored (log scale), one point per compression variant."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        marker = "*" if r["variant"] == "baseline" else "o"
        ax.scatter(
            r["stored_bytes"],
            r["accuracy"],
            s=120 if marker == "*" else 60,
            marker=marker,
            label=f"{r['variant']} ({r['compression_x']:.1f}x)",
        )
    ax.set_xscale("log")
    # Decades labelled, minor ticks unlabelled: minor labels overlapped on a log axis.
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_bytes_label))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set(xlabel="bytes stored (log scale)", ylabel="test accuracy", title="accuracy vs size")
    _accuracy_axis(ax, [r["accuracy"] for r in rows])
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return to_png(fig)


def attention_maps(att: dict[str, Any]) -> bytes:
    """Per sample: its input (signal or image) above its attention map (or pooling weights)."""
    n = len(att["weights"])
    fig, axes = plt.subplots(2, n, figsize=(3.2 * n, 6), squeeze=False)
    for i in range(n):
        inp, w = np.asarray(att["inputs"][i]), np.asarray(att["weights"][i])
        top, bottom = axes[0][i], axes[1][i]
        if inp.ndim == 2:
            top.imshow(inp, cmap="gray")
            top.axis("off")
        else:
            top.plot(inp, lw=1)
        top.set_title(f"true {att['labels'][i]}, predicted {att['predictions'][i]}", fontsize=9)
        if w.ndim == 2:
            bottom.imshow(w, cmap="viridis", aspect="auto")
            bottom.set(xlabel="key", ylabel="query")
        else:
            bottom.bar(np.arange(len(w)), w)
            bottom.set(xlabel="step", ylabel="pooling weight")
    fig.tight_layout()
    return to_png(fig)


def latency_throughput(rows: list[dict[str, Any]]) -> bytes:
    """p50 and p99 latency against requests per second, a line per serving mode; each point
    is one concurrency level (labelled)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    for i, mode in enumerate(modes):
        part = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["concurrency"])
        color = f"C{i}"
        x = [r["rps"] for r in part]
        ax.plot(x, [r["p50_ms"] for r in part], "o-", color=color, label=f"{mode}: p50")
        ax.plot(x, [r["p99_ms"] for r in part], "s--", color=color, alpha=0.6, label=f"{mode}: p99")
        for r in part:
            ax.annotate(str(r["concurrency"]), (r["rps"], r["p50_ms"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))  # fmt: skip
    ax.set(xlabel="answered requests per second", ylabel="latency (ms)", yscale="log",
           title="latency vs throughput (labels: concurrent clients)")  # fmt: skip
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best")
    return to_png(fig)


def class_balance(imb: dict[str, Any], class_names: list[str]) -> bytes:
    """Training counts per class (before and after re-sampling) beside test recall per class."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    x = np.arange(len(class_names))
    after = imb.get("sampled_counts")
    width = 0.4 if after else 0.8
    left.bar(x - (width / 2 if after else 0), imb["train_counts"], width, label="training split")
    if after:
        left.bar(x + width / 2, after, width, label=f"one epoch ({imb.get('sampler')})")
    left.set(xticks=x, xlabel="class", ylabel="samples", title="training samples per class")
    left.set_xticklabels(class_names, fontsize=7, rotation=90 if len(x) > 12 else 0)
    left.legend(fontsize=7)
    colors = {"head": "C0", "medium": "C1", "tail": "C3"}
    group_of = {c: g for g, ids in imb["groups"].items() for c in ids}
    right.bar(x, imb["recall"], color=[colors[group_of[i]] for i in range(len(x))])
    right.set(xticks=x, xlabel="class", ylabel="recall", ylim=(0, 1.02),
              title="test recall (blue head, orange medium, red tail)")  # fmt: skip
    right.set_xticklabels(class_names, fontsize=7, rotation=90 if len(x) > 12 else 0)
    right.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return to_png(fig)


# Attack keys of the robust stage -> names as papers print them.
ATTACK_NAMES = {"fgsm": "FGSM", "pgd": "PGD L∞", "pgd_l2": "PGD L2", "square": "Square L∞",
                "cw": "CW-L2", "deepfool": "DeepFool L2"}  # fmt: skip


def attack_name(key: str) -> str:
    return ATTACK_NAMES.get(key, key)


def robustness_curves(curves: dict[str, Any], clean: float | None = None) -> bytes:
    """Robust accuracy against the budget ε, one panel per norm (L∞, L2; an empty one left
    out), one line per attack; the clean accuracy as a star at ε = 0."""
    panels = [(norm, title, {k: c for k, c in curves.items() if c.get("norm") == norm})
              for norm, title in (("linf", "L∞ attacks"), ("l2", "L2 attacks"))]  # fmt: skip
    panels = [p for p in panels if p[2]]
    if not panels:
        raise ValueError("no L∞ or L2 curve to draw")
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    for ax, (norm, title, part) in zip(axes[0], panels):
        for key, c in part.items():
            ax.plot(c["eps"], c["accuracy"], marker="o", ms=4, lw=1.3, label=attack_name(key))
        if clean is not None:
            ax.plot([0], [clean], "k*", ms=11, zorder=5, label=f"clean ({clean:.3f})")
        unit = "L∞" if norm == "linf" else "L2"
        ax.set(xlabel=f"ε ({unit} budget, input units)", ylabel="robust accuracy", title=title,
               ylim=(-0.02, 1.02))  # fmt: skip
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return to_png(fig)


def corruption_curves(corruptions: dict[str, Any]) -> bytes:
    """Accuracy against severity (0 = clean, 1-5), one line per corruption."""
    if not corruptions:
        raise ValueError("no corruption to draw")
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, c in corruptions.items():
        ax.plot(c["severity"], c["accuracy"], marker="o", ms=4, lw=1.3,
                label=name.replace("_", " "))  # fmt: skip
    ax.set(xlabel="severity (0 = clean)", ylabel="accuracy", ylim=(-0.02, 1.02),
           title="accuracy under common corruptions", xticks=range(6))  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return to_png(fig)


def _image_of(x: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, dict[str, Any]]:
    """An input (C, H, W) as imshow takes it: RGB (H, W, 3) scaled to [0, 1], or channel 0
    in grey between ``lo`` and ``hi``."""
    if x.shape[0] == 3:
        rgb = np.transpose(x, (1, 2, 0))
        return np.clip((rgb - lo) / ((hi - lo) or 1.0), 0.0, 1.0), {}
    return x[0], {"cmap": "gray", "vmin": lo, "vmax": hi}


def adversarial_examples(
    examples: list[dict[str, Any]], lo: float | None = None, hi: float | None = None
) -> bytes:
    """Clean inputs beside their adversarial versions. Images (C, H, W): clean and adversarial
    side by side, drawn on the same scale (``lo``..``hi``, the valid range, when given);
    signals (C, L) or (L,): clean (solid) and adversarial (dashed) overlaid in one panel."""
    if not examples:
        raise ValueError("no example pair to draw")
    first = np.asarray(examples[0]["clean"], dtype=float)
    image = first.ndim == 3
    per_pair = 2 if image else 1
    pairs_per_row = min(len(examples), 4 if image else 3)
    rows = -(-len(examples) // pairs_per_row)
    cols = pairs_per_row * per_pair
    size = (2.0 * cols, 2.4 * rows) if image else (4.2 * cols, 2.8 * rows)
    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, ex in enumerate(examples):
        clean = np.asarray(ex["clean"], dtype=float)
        adv = np.asarray(ex["adversarial"], dtype=float)
        row, col = divmod(i, pairs_per_row)
        title = f"label {ex['label']}: {ex['clean_prediction']} → {ex['adversarial_prediction']}"
        linf = ex.get("linf")
        if image:
            a = lo if lo is not None else float(min(clean.min(), adv.min()))
            b = hi if hi is not None else float(max(clean.max(), adv.max()))
            left, right = axes[row][2 * col], axes[row][2 * col + 1]
            for ax, x in ((left, clean), (right, adv)):
                shown, style = _image_of(x, a, b)
                ax.imshow(shown, **style)
                ax.set_xticks([])
                ax.set_yticks([])
                ax.axis("on")
            left.set_title(title, fontsize=8, loc="left")
            left.set_xlabel("clean", fontsize=8)
            right.set_xlabel("adversarial" + (f" (L∞ {linf:.3g})" if linf is not None else ""),
                             fontsize=8)  # fmt: skip
        else:
            ax = axes[row][col]
            ax.axis("on")
            c2, a2 = clean.reshape(-1, clean.shape[-1]), adv.reshape(-1, adv.shape[-1])
            for ch in range(min(len(c2), 3)):
                tag = f" ch{ch}" if len(c2) > 1 else ""
                ax.plot(c2[ch], color=f"C{ch}", lw=1.2, label=f"clean{tag}")
                ax.plot(a2[ch], color=f"C{ch}", lw=1.0, ls="--", alpha=0.9,
                        label=f"adversarial{tag}")  # fmt: skip
            extra = f" (L∞ {linf:.3g})" if linf is not None else ""
            ax.set_title(title + extra, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.grid(alpha=0.3)
            if i == 0:
                ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return to_png(fig)
