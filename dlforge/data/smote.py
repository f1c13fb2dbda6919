"""SMOTE and its relatives (imbalanced-learn's SMOTE, Borderline-SMOTE, ADASYN) on feature
vectors: tabular data as it is, and the embeddings a trained backbone gives for images or
signals (``train.decoupled`` retrains the classifier head on them: Kang et al. 2020). Raw
pixels are refused: interpolating between two images makes a blend, not a new sample.

Only ever applied to the training split: the validation and test splits stay as they are.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from dlforge.config import ConfigError

Method = Literal["smote", "borderline", "adasyn"]
METHODS: tuple[str, ...] = ("smote", "borderline", "adasyn")


def oversampler(method: str, seed: int = 0, k_neighbors: int = 5) -> Any:
    """The imbalanced-learn over-sampler for ``method``, seeded."""
    from imblearn.over_sampling import ADASYN, SMOTE, BorderlineSMOTE

    if method == "smote":
        return SMOTE(random_state=seed, k_neighbors=k_neighbors)
    if method == "borderline":
        return BorderlineSMOTE(random_state=seed, k_neighbors=k_neighbors)
    if method == "adasyn":
        return ADASYN(random_state=seed, n_neighbors=k_neighbors)
    raise ConfigError(f"over-sampling method '{method}' is unknown; choose one of {METHODS}")


def smote_features(
    x: np.ndarray, y: np.ndarray, method: str = "smote", seed: int = 0, k_neighbors: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` with synthetic minority samples appended until every class matches the
    largest. ``x`` must be (N, features): tabular data or embeddings."""
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 2:
        raise ConfigError(
            f"SMOTE interpolates feature vectors; inputs of shape {x.shape[1:]} are not "
            "(images and signals: use train.decoupled, which applies it to a trained "
            "backbone's embeddings)"
        )
    counts = np.bincount(y)
    present = counts[counts > 0]
    if present.min() <= k_neighbors:
        rare = int(np.flatnonzero(counts == present.min())[0])
        raise ConfigError(
            f"class {rare} has {present.min()} training samples; {method} needs more than "
            f"k_neighbors={k_neighbors} (lower k_neighbors)"
        )
    x_res, y_res = oversampler(method, seed, k_neighbors).fit_resample(x, y)
    return np.asarray(x_res, dtype=x.dtype), np.asarray(y_res, dtype=y.dtype)
