"""Seeded stratified splits and normalisation fitted on the training split only."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from dlforge.data.normalize import DataError


def stratified_split(
    x: np.ndarray, y: np.ndarray, fraction: float, seed: int, where: str = "data"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split off ``fraction`` of the samples, keeping class proportions; returns (xa, ya, xb, yb)."""
    counts = np.bincount(y)
    present = counts[counts > 0]
    # Stratifying needs at least 2 samples of each class; fall back to a plain shuffle otherwise.
    stratify = y if present.min() >= 2 and round(fraction * len(y)) >= len(present) else None
    try:
        xa, xb, ya, yb = train_test_split(
            x, y, test_size=fraction, random_state=seed, stratify=stratify
        )
    except ValueError as exc:
        raise DataError(f"{where}: cannot split {len(y)} samples ({exc})") from None
    return xa, ya, xb, yb


def fit_normalizer(x: np.ndarray) -> dict[str, Any]:
    """Per-channel mean/std over every axis but axis 1 (per feature for (N, F) tables)."""
    axes = tuple(i for i in range(x.ndim) if i != 1)
    mean = x.mean(axis=axes, dtype=np.float64)
    std = x.std(axis=axes, dtype=np.float64)
    std = np.where(std < 1e-8, 1.0, std)  # constant channels: leave their scale alone
    return {"mean": mean.tolist(), "std": std.tolist()}
