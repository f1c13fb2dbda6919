"""Classification metrics in NumPy, checked against scikit-learn to 1e-9 in the tests.

Naming: ``*_score`` is higher-is-better, ``*_loss``/``*_error`` lower-is-better. Labels are
integer class ids 0..K-1 and ``n_classes`` is given, so a class that is never predicted (or never
present) still has its row, column and zero-division-safe scores.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Average = Literal["macro", "micro", "weighted"] | None


def _labels(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {y.shape}")
    return y.astype(np.int64)


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den is 0 (scikit-learn's zero_division=0)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den != 0)
    return out


def accuracy_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true, y_pred = _labels(y_true), _labels(y_pred)
    return float(np.mean(y_true == y_pred))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """C[i, j] = samples of true class i predicted as j."""
    y_true, y_pred = _labels(y_true), _labels(y_pred)
    return np.bincount(n_classes * y_true + y_pred, minlength=n_classes**2).reshape(
        n_classes, n_classes
    )


def precision_recall_f1(
    y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, average: Average = None
) -> tuple[np.ndarray | float, np.ndarray | float, np.ndarray | float]:
    """Precision, recall and F1, per class (``average=None``) or averaged."""
    cm = confusion_matrix(y_true, y_pred, n_classes)
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    if average == "micro":
        tp, fp, fn = np.array([tp.sum()]), np.array([fp.sum()]), np.array([fn.sum()])
    precision = _divide(tp, tp + fp)
    recall = _divide(tp, tp + fn)
    f1 = _divide(2 * tp, 2 * tp + fp + fn)
    if average is None:
        return precision, recall, f1
    if average == "micro":
        return float(precision[0]), float(recall[0]), float(f1[0])
    if average == "macro":
        return float(precision.mean()), float(recall.mean()), float(f1.mean())
    support = cm.sum(axis=1).astype(np.float64)
    if support.sum() == 0:
        return 0.0, 0.0, 0.0
    w = support / support.sum()
    return float(precision @ w), float(recall @ w), float(f1 @ w)


def balanced_accuracy_score(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Mean recall over the classes present in ``y_true``."""
    cm = confusion_matrix(y_true, y_pred, n_classes)
    support = cm.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(cm)[present] / support[present]))


# --- threshold curves --------------------------------------------------------------------------


def _binary_clf_curve(
    y_true: np.ndarray, score: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative false and true positives at each distinct score, highest score first."""
    y_true = np.asarray(y_true).astype(bool)
    score = np.asarray(score, dtype=np.float64)
    order = np.argsort(score, kind="mergesort")[::-1]
    score, y_true = score[order], y_true[order]
    distinct = np.flatnonzero(np.diff(score))
    ends = np.r_[distinct, len(y_true) - 1]
    tps = np.cumsum(y_true, dtype=np.float64)[ends]
    fps = 1 + ends - tps
    return fps, tps, score[ends]


def roc_curve(
    y_true: np.ndarray, score: np.ndarray, drop_intermediate: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-positive rate (x) against true-positive rate (y) over every threshold.

    The ROC curve plots TPR against FPR; precision against recall is the PR curve. Starts at
    (0, 0) with threshold +inf. NaN rates where a class is absent.
    """
    fps, tps, thresholds = _binary_clf_curve(y_true, score)
    if drop_intermediate and len(fps) > 2:
        # Keep only the corners: points where the curve changes direction.
        keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    fps, tps = np.r_[0.0, fps], np.r_[0.0, tps]
    thresholds = np.r_[np.inf, thresholds]
    fpr = fps / fps[-1] if fps[-1] > 0 else np.full_like(fps, np.nan)
    tpr = tps / tps[-1] if tps[-1] > 0 else np.full_like(tps, np.nan)
    return fpr, tpr, thresholds


def roc_auc_binary(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present (AUC is undefined)."""
    fpr, tpr, _ = roc_curve(y_true, score)
    if np.isnan(fpr).any() or np.isnan(tpr).any():
        return float("nan")
    return float(np.trapezoid(tpr, fpr))


def roc_auc_ovr(
    y_true: np.ndarray, proba: np.ndarray, average: Literal["macro", "weighted"] | None = "macro"
) -> float | np.ndarray:
    """One-vs-rest AUC per class; averaged over the classes for which it is defined."""
    y_true = _labels(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.shape[1] == 2:  # binary: the positive class's score, as scikit-learn does
        return roc_auc_binary(y_true == 1, proba[:, 1])
    aucs = np.array([roc_auc_binary(y_true == k, proba[:, k]) for k in range(proba.shape[1])])
    if average is None:
        return aucs
    defined = ~np.isnan(aucs)
    if not defined.any():
        return float("nan")
    if average == "macro":
        return float(aucs[defined].mean())
    support = np.bincount(y_true, minlength=proba.shape[1])[defined].astype(np.float64)
    return float(aucs[defined] @ (support / support.sum()))


def precision_recall_curve(
    y_true: np.ndarray, score: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall at each threshold, ending at (recall 0, precision 1)."""
    fps, tps, thresholds = _binary_clf_curve(y_true, score)
    precision = _divide(tps, tps + fps)
    recall = tps / tps[-1] if tps[-1] > 0 else np.ones_like(tps)
    # Reverse so recall decreases, then append the (0, 1) end point.
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thresholds[::-1]


def average_precision_score(y_true: np.ndarray, score: np.ndarray) -> float:
    """AP = sum_n (R_n - R_{n-1}) P_n, the step-wise area under the PR curve (no interpolation)."""
    precision, recall, _ = precision_recall_curve(y_true, score)
    return float(-np.sum(np.diff(recall) * precision[:-1]))


def average_precision_ovr(
    y_true: np.ndarray, proba: np.ndarray, average: Literal["macro"] | None = "macro"
) -> float | np.ndarray:
    y_true = _labels(y_true)
    aps = np.array(
        [
            average_precision_score(y_true == k, proba[:, k]) if np.any(y_true == k) else np.nan
            for k in range(proba.shape[1])
        ]
    )
    if average is None:
        return aps
    return float(np.nanmean(aps)) if not np.isnan(aps).all() else float("nan")


# --- probabilistic quality --------------------------------------------------------------------


def log_loss(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class; probabilities clipped to [eps, 1-eps]."""
    y_true = _labels(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    eps = np.finfo(proba.dtype).eps
    p = np.clip(proba[np.arange(len(y_true)), y_true], eps, 1 - eps)
    return float(-np.mean(np.log(p)))


def reliability_bins(
    y_true: np.ndarray, proba: np.ndarray, n_bins: int = 15
) -> dict[str, np.ndarray]:
    """Per equal-width confidence bin: mean confidence, accuracy and count (top-1 confidence)."""
    y_true = _labels(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y_true).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bins are (lo, hi]; a confidence of exactly 0 joins the first bin.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins).astype(np.float64)
    conf_sum = np.bincount(index, weights=confidence, minlength=n_bins)
    acc_sum = np.bincount(index, weights=correct, minlength=n_bins)
    return {
        "edges": edges,
        "count": count,
        "confidence": _divide(conf_sum, count),
        "accuracy": _divide(acc_sum, count),
    }


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, n_bins: int = 15) -> float:
    """ECE = sum_b (n_b / N) |accuracy_b - confidence_b| (Guo et al., 2017)."""
    bins = reliability_bins(y_true, proba, n_bins)
    n = bins["count"].sum()
    return float(np.sum(bins["count"] / n * np.abs(bins["accuracy"] - bins["confidence"])))
