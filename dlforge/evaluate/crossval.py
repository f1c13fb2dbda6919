"""k-fold cross-validation: a fresh model per fold, per-fold metrics, mean and spread.

The folds are scikit-learn's (``StratifiedKFold``, ``GroupKFold``,
``RepeatedStratifiedKFold``) with the run's seed, so their indices are exactly what scikit-learn
gives for the same labels, groups and seed. Cross-validation runs on the training pool (the
training and validation splits); the test split stays untouched. In each fold the
normalisation is fitted on that fold's training part only, a validation share is carved from it
for the Trainer (best weights, early stopping), and the held-out fold is scored. A fold that
fails is recorded with its error; the others still run.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable
from typing import Any

import numpy as np

from dlforge.evaluate.config import CrossValConfig

log = logging.getLogger("dlforge.crossval")

METRICS = ("accuracy", "f1_macro", "balanced_accuracy", "log_loss", "expected_calibration_error")


def fold_indices(
    y: np.ndarray, cfg: CrossValConfig, seed: int, groups: np.ndarray | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train indices, held-out indices) of every fold."""
    from sklearn.model_selection import GroupKFold, RepeatedStratifiedKFold, StratifiedKFold

    index = np.arange(len(y))
    if cfg.kind == "group":
        if groups is None:
            raise ValueError("grouped folds need a group for every sample (crossval.kind: group)")
        return list(GroupKFold(n_splits=cfg.folds).split(index, y, groups))
    if cfg.kind == "repeated":
        splitter: Any = RepeatedStratifiedKFold(
            n_splits=cfg.folds, n_repeats=cfg.repeats, random_state=seed
        )
        return list(splitter.split(index, y))
    return list(
        StratifiedKFold(n_splits=cfg.folds, shuffle=True, random_state=seed).split(index, y)
    )


def summarise(folds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean, standard deviation, min and max of each metric over the folds that finished."""
    done = [f for f in folds if "error" not in f]
    out: dict[str, dict[str, float]] = {}
    for key in METRICS:
        values = [f[key] for f in done if key in f]
        if values:
            out[key] = {
                "mean": statistics.mean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "min": min(values),
                "max": max(values),
            }
    return out


def run_folds(
    y: np.ndarray,
    cfg: CrossValConfig,
    seed: int,
    fit_and_score: Callable[[int, np.ndarray, np.ndarray], dict[str, Any]],
    groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """Call ``fit_and_score(fold, train_idx, held_out_idx)`` for every fold; a fold that raises
    is recorded (type and message) and the rest go on."""
    folds = []
    for i, (train_idx, held_idx) in enumerate(fold_indices(y, cfg, seed, groups)):
        entry: dict[str, Any] = {"fold": i, "train_size": len(train_idx), "size": len(held_idx)}
        try:
            entry.update(fit_and_score(i, train_idx, held_idx))
        except Exception as exc:
            log.warning("fold %d failed: %s: %s", i, type(exc).__name__, exc)
            entry["error"] = {"type": type(exc).__name__, "message": " ".join(str(exc).split())}
        folds.append(entry)
    return {
        "kind": cfg.kind,
        "folds": folds,
        "summary": summarise(folds),
        "failed": [f["fold"] for f in folds if "error" in f],
    }
