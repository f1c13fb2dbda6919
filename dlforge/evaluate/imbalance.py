"""Metrics for imbalanced classes, beside the usual ones: the geometric mean of the per-class
recalls, and accuracy on the head, medium and tail classes.

Head, medium and tail are thirds of the classes ranked by their training count (most first),
so that they exist at any data size; the long-tailed literature's fixed cut-offs (more than 100
training images, 20 to 100, fewer than 20: Liu et al. 2019) presume CIFAR-sized classes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import recall_score


def geometric_mean(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """The geometric mean of the recalls of the classes present in ``y_true`` (0 as soon as
    one class is never recognised)."""
    present = np.unique(y_true)
    recalls = recall_score(y_true, y_pred, labels=present, average=None, zero_division=0)
    del num_classes
    return float(np.prod(recalls) ** (1 / len(recalls)))


def groups(train_counts: list[int] | np.ndarray) -> dict[str, list[int]]:
    """Class ids of the head, medium and tail thirds (by training count, most first)."""
    counts = np.asarray(train_counts)
    order = np.argsort(-counts, kind="stable")
    thirds = np.array_split(order, 3)
    return {name: sorted(int(c) for c in part)
            for name, part in zip(("head", "medium", "tail"), thirds)}  # fmt: skip


def imbalance_report(
    recall: list[float] | np.ndarray,
    support: list[int] | np.ndarray,
    train_counts: list[int] | np.ndarray,
) -> dict[str, Any]:
    """From the per-class test recalls (and test support): the geometric mean of the recalls,
    and the mean recall of the head, medium and tail classes (the accuracy on each group's test
    samples when the test split is balanced)."""
    recall = np.asarray(recall, dtype=np.float64)
    present = np.asarray(support) > 0
    out: dict[str, Any] = {
        "train_counts": [int(c) for c in train_counts],
        "imbalance_ratio": float(max(train_counts) / max(1, min(train_counts))),
        "recall": [float(r) for r in recall],
        "geometric_mean": float(np.prod(recall[present]) ** (1 / max(1, present.sum()))),
        "groups": groups(train_counts),
    }
    for name, ids in out["groups"].items():
        ids = [i for i in ids if present[i]]
        out[f"{name}_recall"] = float(np.mean(recall[ids])) if ids else None
    return out
