"""Classification metrics: thin wrappers over scikit-learn's, plus what it lacks.

Every score is computed by ``sklearn.metrics`` (so one widely used implementation is the one we
trust); this module adds the input check that scikit-learn does not make, torch-tensor input,
our conventions where scikit-learn would warn or raise, and calibration (ECE, reliability bins),
which scikit-learn does not have.

Naming: ``*_score`` is higher-is-better, ``*_loss``/``*_error`` lower-is-better. Labels are
integer class ids 0..K-1. K is ``n_classes`` where it is passed, else the number of probability
columns. A label outside 0..K-1 is a ``ValueError`` naming it: scikit-learn, given
``labels=range(K)``, would silently drop such samples from a confusion matrix. Every class in
0..K-1 keeps its row, column and zero-division-safe (0) scores even when never predicted or
never present.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import numpy.typing as npt
import sklearn.metrics as skm
import torch
from sklearn.exceptions import UndefinedMetricWarning

Average = Literal["macro", "micro", "weighted"] | None
ArrayLike = npt.ArrayLike | torch.Tensor


def as_numpy(x: ArrayLike) -> np.ndarray:
    """``x`` as a NumPy array; a torch tensor is detached and copied to the CPU first."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        # NumPy has no bfloat16; float32 holds every bfloat16 value exactly.
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    return np.asarray(x)


def _are(values: np.ndarray, limit: int = 5) -> str:
    """'label 3 is' or 'labels -1, 3 are', naming at most ``limit`` values."""
    if len(values) == 1:
        return f"label {values[0].item()!r} is"
    listed = ", ".join(repr(v.item()) for v in values[:limit])
    more = f" and {len(values) - limit} more" if len(values) > limit else ""
    return f"labels {listed}{more} are"


def check_labels(y: ArrayLike, n_classes: int | None, name: str = "y_true") -> np.ndarray:
    """``y`` as int64 class ids in 0..n_classes-1, else a ``ValueError`` naming the bad values.

    Integral floats (3.0) and booleans are accepted. With ``n_classes=None`` only the lower bound
    is known, so only non-integers and negative values are rejected.
    """
    y = as_numpy(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {y.shape}")
    if y.dtype == bool:
        return y.astype(np.int64)
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise ValueError(f"{name} must hold integer class ids, got dtype {y.dtype}")
    span = "0..K-1" if n_classes is None else f"0..{n_classes - 1}"
    if np.issubdtype(y.dtype, np.floating):
        # NaN and ±inf are not class ids either; astype(int64) would turn them into garbage.
        fractional = np.unique(y[~np.isfinite(y) | (y != np.round(y))])
        if len(fractional):
            raise ValueError(f"{_are(fractional)} not among the integer class ids {span} ({name})")
    outside = y < 0 if n_classes is None else (y < 0) | (y >= n_classes)
    if outside.any():
        raise ValueError(f"{_are(np.unique(y[outside]))} outside {span} ({name})")
    return y.astype(np.int64)


def check_proba(proba: ArrayLike, name: str = "proba") -> np.ndarray:
    """``proba`` as a finite (N, K) float array; a float dtype is kept (log-loss needs it)."""
    proba = as_numpy(proba)
    if proba.ndim != 2:
        raise ValueError(f"{name} must be two-dimensional (N, K), got shape {proba.shape}")
    if not np.issubdtype(proba.dtype, np.floating):
        proba = proba.astype(np.float64)
    if not np.isfinite(proba).all():
        raise ValueError(f"{name} has non-finite values")
    return proba


def _check_score(score: ArrayLike, n_samples: int) -> np.ndarray:
    score = as_numpy(score)
    if score.shape != (n_samples,):
        raise ValueError(f"score must have shape ({n_samples},), got {score.shape}")
    if not np.isfinite(score).all():
        raise ValueError("score has non-finite values")
    return score


def _binary(y_true: ArrayLike, score: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Labels 0/1 (booleans accepted) and one finite score per sample."""
    y = check_labels(y_true, 2)
    return y, _check_score(score, len(y))


def _pair(
    y_true: ArrayLike, y_pred: ArrayLike, n_classes: int | None
) -> tuple[np.ndarray, np.ndarray]:
    y_true = check_labels(y_true, n_classes, "y_true")
    y_pred = check_labels(y_pred, n_classes, "y_pred")
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} labels but y_pred has {len(y_pred)}")
    return y_true, y_pred


def _with_proba(y_true: ArrayLike, proba: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities checked together; K is the number of probability columns."""
    proba = check_proba(proba)
    y = check_labels(y_true, proba.shape[1])
    if len(y) != len(proba):
        raise ValueError(f"proba has {len(proba)} rows but there are {len(y)} labels")
    return y, proba


# --- label metrics ----------------------------------------------------------------------------


def accuracy_score(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int | None = None) -> float:
    """Fraction of correct predictions; with ``n_classes`` the labels are also range-checked."""
    return float(skm.accuracy_score(*_pair(y_true, y_pred, n_classes)))


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int) -> np.ndarray:
    """C[i, j] = samples of true class i predicted as j, shape (K, K)."""
    y_true, y_pred = _pair(y_true, y_pred, n_classes)
    return skm.confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))


def precision_recall_f1(
    y_true: ArrayLike, y_pred: ArrayLike, n_classes: int, average: Average = None
) -> tuple[np.ndarray | float, np.ndarray | float, np.ndarray | float]:
    """Precision, recall and F1, per class (``average=None``) or averaged."""
    y_true, y_pred = _pair(y_true, y_pred, n_classes)
    p, r, f, _ = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(n_classes)), average=average, zero_division=0
    )
    if average is None:
        return p.astype(np.float64), r.astype(np.float64), f.astype(np.float64)
    return float(p), float(r), float(f)


def balanced_accuracy_score(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int) -> float:
    """Mean recall over the classes present in ``y_true``."""
    y_true, y_pred = _pair(y_true, y_pred, n_classes)
    with warnings.catch_warnings():
        # A predicted class absent from y_true has no recall; skipping it is what we document.
        warnings.filterwarnings("ignore", "y_pred contains classes not in y_true")
        return float(skm.balanced_accuracy_score(y_true, y_pred))


# --- threshold curves --------------------------------------------------------------------------


def roc_curve(
    y_true: ArrayLike, score: ArrayLike, drop_intermediate: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-positive rate (x) against true-positive rate (y) over every threshold.

    The ROC curve plots TPR against FPR; precision against recall is the PR curve. Starts at
    (0, 0) with threshold +inf. NaN rates where a class is absent (without a warning).
    """
    y, score = _binary(y_true, score)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # the documented NaN rates
        fpr, tpr, thresholds = skm.roc_curve(y, score, drop_intermediate=drop_intermediate)
    return fpr, tpr, thresholds


def roc_auc_binary(y_true: ArrayLike, score: ArrayLike) -> float:
    """Area under the ROC curve; NaN when only one class is present (AUC is undefined)."""
    y, score = _binary(y_true, score)
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(skm.roc_auc_score(y, score))


def roc_auc_ovr(
    y_true: ArrayLike, proba: ArrayLike, average: Literal["macro", "weighted"] | None = "macro"
) -> float | np.ndarray:
    """One-vs-rest AUC per class; averaged over the classes for which it is defined.

    scikit-learn's multiclass AUC would average in the NaN of a class absent from ``y_true``;
    we skip it instead, so the per-class scores are computed here one binary AUC at a time.
    """
    y, proba = _with_proba(y_true, proba)
    k = proba.shape[1]
    if k == 2:  # binary: the positive class's score, as scikit-learn does
        return roc_auc_binary(y == 1, proba[:, 1])
    aucs = np.array([roc_auc_binary(y == c, proba[:, c]) for c in range(k)])
    if average is None:
        return aucs
    weights = np.bincount(y, minlength=k) if average == "weighted" else np.ones(k)
    return _nan_average(aucs, weights)


def precision_recall_curve(
    y_true: ArrayLike, score: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall at each threshold, ending at (recall 0, precision 1)."""
    y, score = _binary(y_true, score)
    precision, recall, thresholds = skm.precision_recall_curve(y, score)
    return precision, recall, thresholds


def average_precision_score(y_true: ArrayLike, score: ArrayLike) -> float:
    """AP = sum_n (R_n - R_{n-1}) P_n, the step-wise area under the PR curve (no interpolation)."""
    y, score = _binary(y_true, score)
    return float(skm.average_precision_score(y, score))


def average_precision_ovr(
    y_true: ArrayLike, proba: ArrayLike, average: Literal["macro"] | None = "macro"
) -> float | np.ndarray:
    """One-vs-rest AP per class; NaN for a class absent from ``y_true``, skipped in the mean."""
    y, proba = _with_proba(y_true, proba)
    k = proba.shape[1]
    aps = np.array(
        [
            average_precision_score(y == c, proba[:, c]) if np.any(y == c) else np.nan
            for c in range(k)
        ]
    )
    if average is None:
        return aps
    return _nan_average(aps, np.ones(k))


def _nan_average(values: np.ndarray, weights: npt.ArrayLike) -> float:
    """Weighted mean over the non-NaN values; NaN if there are none."""
    defined = ~np.isnan(values)
    w = np.asarray(weights, dtype=np.float64)[defined]
    if not defined.any() or w.sum() == 0:
        return float("nan")
    return float(values[defined] @ (w / w.sum()))


# --- probabilistic quality --------------------------------------------------------------------


def log_loss(y_true: ArrayLike, proba: ArrayLike) -> float:
    """Mean negative log-likelihood of the true class (scikit-learn's).

    Probabilities are clipped to [eps, 1-eps] with eps of *their* dtype, as scikit-learn does, so
    a float32 input scores as scikit-learn scores it.
    """
    y, proba = _with_proba(y_true, proba)
    return float(skm.log_loss(y, proba, labels=list(range(proba.shape[1]))))


def reliability_bins(
    y_true: ArrayLike, proba: ArrayLike, n_bins: int = 15
) -> dict[str, np.ndarray]:
    """Per equal-width confidence bin: mean confidence, accuracy and count (top-1 confidence)."""
    y, proba = _with_proba(y_true, proba)
    proba = proba.astype(np.float64)
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y).astype(np.float64)
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


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den is 0: an empty bin has no confidence or accuracy."""
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def expected_calibration_error(y_true: ArrayLike, proba: ArrayLike, n_bins: int = 15) -> float:
    """ECE = sum_b (n_b / N) |accuracy_b - confidence_b| (Guo et al., 2017)."""
    bins = reliability_bins(y_true, proba, n_bins)
    n = bins["count"].sum()
    return float(np.sum(bins["count"] / n * np.abs(bins["accuracy"] - bins["confidence"])))
