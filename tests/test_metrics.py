"""Our wrappers agree with scikit-learn's to 1e-9, edge cases included, and check their input."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import sklearn.metrics as skm
import torch
from sklearn.exceptions import UndefinedMetricWarning

from dlforge.evaluate import metrics as M
from dlforge.evaluate.clustering import (
    adjusted_rand_score,
    normalized_mutual_info_score,
    silhouette_score,
)

TOL = 1e-9


def random_case(
    seed: int, n: int = 300, k: int = 4, missing_pred: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 2.0 * np.eye(k)[y] * rng.random((n, 1))
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred = proba.argmax(1)
    if missing_pred:  # class 0 is never predicted
        pred = np.where(pred == 0, 1, pred)
    return y, pred, proba


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("missing_pred", [False, True])
def test_label_metrics_match_sklearn(seed: int, missing_pred: bool) -> None:
    k = 4
    y, pred, _ = random_case(seed, k=k, missing_pred=missing_pred)
    labels = list(range(k))
    assert M.accuracy_score(y, pred) == pytest.approx(skm.accuracy_score(y, pred), abs=TOL)
    assert np.array_equal(
        M.confusion_matrix(y, pred, k), skm.confusion_matrix(y, pred, labels=labels)
    )
    for avg in (None, "macro", "micro", "weighted"):
        ours = M.precision_recall_f1(y, pred, k, avg)
        ref = skm.precision_recall_fscore_support(
            y, pred, labels=labels, average=avg, zero_division=0
        )[:3]
        for a, b in zip(ours, ref):
            np.testing.assert_allclose(a, b, atol=TOL)
    assert M.balanced_accuracy_score(y, pred, k) == pytest.approx(
        skm.balanced_accuracy_score(y, pred), abs=TOL
    )


def test_single_class_present() -> None:
    y = np.zeros(20, dtype=int)
    pred = np.r_[np.zeros(15, dtype=int), np.ones(5, dtype=int)]
    ref = skm.precision_recall_fscore_support(y, pred, labels=[0, 1, 2], zero_division=0)[:3]
    for a, b in zip(M.precision_recall_f1(y, pred, 3), ref):
        np.testing.assert_allclose(a, b, atol=TOL)
    with pytest.warns(UserWarning):  # sklearn warns: y_pred has a class absent from y_true
        ref_bal = skm.balanced_accuracy_score(y, pred)
    assert M.balanced_accuracy_score(y, pred, 3) == pytest.approx(ref_bal, abs=TOL)
    proba = np.full((20, 3), 1 / 3)
    # AUC is undefined with one class: sklearn warns and gives NaN; we give NaN.
    with pytest.warns(UndefinedMetricWarning):
        ref_auc = skm.roc_auc_score(y == 0, proba[:, 0])
    assert np.isnan(ref_auc) and np.isnan(M.roc_auc_binary(y == 0, proba[:, 0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # our documented results come without sklearn's warnings
        M.balanced_accuracy_score(y, pred, 3)
        M.roc_auc_binary(y == 0, proba[:, 0])
        assert np.isnan(M.roc_curve(y == 1, proba[:, 0])[1]).all()


@pytest.mark.parametrize("seed", range(5))
def test_curves_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    score = np.round(rng.random(200) + 0.3 * y, 2)  # rounding makes ties
    for drop in (False, True):
        ours = M.roc_curve(y, score, drop_intermediate=drop)
        ref = skm.roc_curve(y, score, drop_intermediate=drop)
        for a, b in zip(ours, ref):
            np.testing.assert_allclose(a, b, atol=TOL)
    assert M.roc_auc_binary(y, score) == pytest.approx(skm.roc_auc_score(y, score), abs=TOL)
    for a, b in zip(M.precision_recall_curve(y, score), skm.precision_recall_curve(y, score)):
        np.testing.assert_allclose(a, b, atol=TOL)
    assert M.average_precision_score(y, score) == pytest.approx(
        skm.average_precision_score(y, score), abs=TOL
    )


@pytest.mark.parametrize("seed", range(5))
def test_probabilistic_metrics_match_sklearn(seed: int) -> None:
    y, _, proba = random_case(seed)
    for avg in ("macro", "weighted"):
        assert M.roc_auc_ovr(y, proba, avg) == pytest.approx(
            skm.roc_auc_score(y, proba, multi_class="ovr", average=avg), abs=TOL
        )
    assert M.average_precision_ovr(y, proba) == pytest.approx(
        np.mean([skm.average_precision_score(y == k, proba[:, k]) for k in range(4)]), abs=TOL
    )
    assert M.log_loss(y, proba) == pytest.approx(skm.log_loss(y, proba, labels=range(4)), abs=TOL)
    binary = proba[:, :2] / proba[:, :2].sum(1, keepdims=True)
    yb = (y % 2).astype(int)
    assert M.roc_auc_ovr(yb, binary) == pytest.approx(skm.roc_auc_score(yb, binary[:, 1]), abs=TOL)


def test_ovr_auc_skips_a_class_absent_from_the_labels() -> None:
    y, _, proba = random_case(0, k=4)
    y = np.where(y == 3, 2, y)  # class 3 never occurs: its one-vs-rest AUC is undefined
    assert np.isnan(np.asarray(M.roc_auc_ovr(y, proba, None))[3])
    expected = np.mean([skm.roc_auc_score(y == k, proba[:, k]) for k in range(3)])
    assert M.roc_auc_ovr(y, proba, "macro") == pytest.approx(expected, abs=TOL)
    assert np.isnan(np.asarray(M.average_precision_ovr(y, proba, None))[3])
    expected = np.mean([skm.average_precision_score(y == k, proba[:, k]) for k in range(3)])
    assert M.average_precision_ovr(y, proba, "macro") == pytest.approx(expected, abs=TOL)


def test_calibration_known_values() -> None:
    # Two bins used: 0.9-confident (3 right of 4) and 0.6-confident (1 right of 2).
    proba = np.array([[0.9, 0.1]] * 4 + [[0.4, 0.6]] * 2)
    y = np.array([0, 0, 0, 1, 1, 0])
    bins = M.reliability_bins(y, proba, n_bins=10)
    assert bins["count"].sum() == 6
    ece = 4 / 6 * abs(0.75 - 0.9) + 2 / 6 * abs(0.5 - 0.6)
    assert M.expected_calibration_error(y, proba, n_bins=10) == pytest.approx(ece, abs=TOL)
    perfect = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert M.expected_calibration_error(np.array([0, 1]), perfect) == pytest.approx(0.0)


@pytest.mark.parametrize("seed", range(5))
def test_clustering_scores_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(120, 5))
    a = rng.integers(0, 4, 120)
    b = np.where(rng.random(120) < 0.6, a, rng.integers(0, 5, 120))
    b[0] = 7  # a singleton cluster
    assert adjusted_rand_score(a, b) == pytest.approx(skm.adjusted_rand_score(a, b), abs=TOL)
    assert normalized_mutual_info_score(a, b) == pytest.approx(
        skm.normalized_mutual_info_score(a, b), abs=TOL
    )
    assert silhouette_score(x, b) == pytest.approx(skm.silhouette_score(x, b), abs=TOL)


def test_clustering_edge_cases() -> None:
    same = np.array([0, 0, 1, 1])
    assert adjusted_rand_score(same, same) == 1.0
    assert normalized_mutual_info_score(same, [5, 5, 9, 9]) == pytest.approx(1.0)
    one = np.zeros(4, dtype=int)
    assert adjusted_rand_score(one, one) == skm.adjusted_rand_score(one, one)
    assert normalized_mutual_info_score(one, same) == pytest.approx(
        skm.normalized_mutual_info_score(one, same), abs=TOL
    )
    with pytest.raises(ValueError):
        silhouette_score(np.zeros((4, 2)), one)


# --- input checks -------------------------------------------------------------------------------

BAD_LABELS = [  # (value, what the error must say), with K = 3
    (3, "label 3 is outside 0..2"),
    (-1, "label -1 is outside 0..2"),
    (1.5, "label 1.5 is not among the integer class ids 0..2"),
]
LABEL_METRICS: dict[str, Callable[[Any, Any], Any]] = {
    "confusion_matrix": lambda t, p: M.confusion_matrix(t, p, 3),
    "precision_recall_f1": lambda t, p: M.precision_recall_f1(t, p, 3),
    "accuracy": lambda t, p: M.accuracy_score(t, p, 3),
    "balanced_accuracy": lambda t, p: M.balanced_accuracy_score(t, p, 3),
}


def test_issue_example_is_an_error() -> None:
    # Used to count the 3 as true 1, predicted 0 (a flat index past the matrix, reshaped).
    with pytest.raises(ValueError, match=r"label 3 is outside 0\.\.2 \(y_pred\)"):
        M.confusion_matrix([0, 1, 2], [3, 1, 2], 3)


@pytest.mark.parametrize("metric", LABEL_METRICS)
@pytest.mark.parametrize(("bad", "message"), BAD_LABELS)
@pytest.mark.parametrize("where", ["y_true", "y_pred"])
def test_label_outside_range_is_an_error_naming_it(
    metric: str, bad: float, message: str, where: str
) -> None:
    good = np.array([0.0, 1.0, 2.0])  # integral floats are fine
    wrong = np.array([bad, 1, 2])
    y_true, y_pred = (wrong, good) if where == "y_true" else (good, wrong)
    with pytest.raises(ValueError, match=re.escape(message) + rf".*\({where}\)"):
        LABEL_METRICS[metric](y_true, y_pred)


@pytest.mark.parametrize(("bad", "message"), BAD_LABELS)
def test_log_loss_label_outside_range_is_an_error(bad: float, message: str) -> None:
    # K comes from the probability columns.
    with pytest.raises(ValueError, match=re.escape(message)):
        M.log_loss(np.array([bad, 1, 2]), np.full((3, 3), 1 / 3))


def test_label_checks_without_k_and_for_binary_scores() -> None:
    with pytest.raises(ValueError, match=r"labels -2, -1 are outside 0\.\.K-1 \(y_true\)"):
        M.accuracy_score([-1, -2, 0], [0, 0, 0])
    with pytest.raises(ValueError, match=r"label 2 is outside 0\.\.1"):
        M.roc_curve([0, 2, 1], [0.1, 0.2, 0.3])


def test_probabilities_must_be_finite_with_a_row_per_label() -> None:
    y = np.array([0, 1])
    with pytest.raises(ValueError, match="non-finite"):
        M.log_loss(y, np.array([[np.nan, 1.0], [0.5, 0.5]]))
    with pytest.raises(ValueError, match="3 rows but there are 2 labels"):
        M.expected_calibration_error(y, np.full((3, 2), 0.5))
    with pytest.raises(ValueError, match="two-dimensional"):
        M.roc_auc_ovr(y, np.array([0.2, 0.8]))


def test_log_loss_float32_matches_sklearn() -> None:
    # The issue's example: clipping must use float32's eps, as sklearn does (was 24.03).
    proba = np.array([[0, 1], [0, 1], [1, 0]], dtype=np.float32)
    y = np.array([0, 1, 1])
    ref = skm.log_loss(y, proba, labels=[0, 1])
    assert ref == pytest.approx(10.63, abs=0.01)
    assert M.log_loss(y, proba) == pytest.approx(ref, abs=TOL)


def _values(result: Any) -> list[np.ndarray]:
    items = result.values() if isinstance(result, dict) else result
    return [np.asarray(v) for v in (items if isinstance(result, dict | tuple) else [result])]


def test_torch_tensors_give_the_numpy_numbers() -> None:
    y, pred, proba = random_case(0)
    x = np.random.default_rng(0).normal(size=(len(y), 5))
    as_numpy = (y, pred, proba, x)
    # Model outputs require grad, which np.asarray refuses.
    as_torch = (
        torch.from_numpy(y),
        torch.from_numpy(pred),
        torch.tensor(proba, requires_grad=True),
        torch.tensor(x, requires_grad=True),
    )
    calls: list[Callable[..., Any]] = [
        lambda y, p, q, x: M.accuracy_score(y, p, 4),
        lambda y, p, q, x: M.confusion_matrix(y, p, 4),
        lambda y, p, q, x: M.precision_recall_f1(y, p, 4),
        lambda y, p, q, x: M.balanced_accuracy_score(y, p, 4),
        lambda y, p, q, x: M.log_loss(y, q),
        lambda y, p, q, x: M.expected_calibration_error(y, q),
        lambda y, p, q, x: M.reliability_bins(y, q),
        lambda y, p, q, x: M.roc_auc_ovr(y, q, None),
        lambda y, p, q, x: M.average_precision_ovr(y, q, None),
        lambda y, p, q, x: M.roc_curve(y == 0, q[:, 0]),
        lambda y, p, q, x: M.roc_auc_binary(y == 0, q[:, 0]),
        lambda y, p, q, x: M.precision_recall_curve(y == 0, q[:, 0]),
        lambda y, p, q, x: M.average_precision_score(y == 0, q[:, 0]),
        lambda y, p, q, x: adjusted_rand_score(y, p),
        lambda y, p, q, x: normalized_mutual_info_score(y, p),
        lambda y, p, q, x: silhouette_score(x, p),
    ]
    for call in calls:
        for a, b in zip(_values(call(*as_torch)), _values(call(*as_numpy)), strict=True):
            np.testing.assert_array_equal(a, b)
