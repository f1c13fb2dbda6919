"""Normalisation by stored per-channel statistics, and the data error: no torch here, so the
inference server applies a run's preprocessing without loading torch."""

from __future__ import annotations

from typing import Any

import numpy as np

from dlforge.config import DlforgeError


class DataError(DlforgeError, ValueError):
    """Bad input data; the message names the file, key, column, row or shape at fault."""


def apply_normalizer(x: np.ndarray, stats: dict[str, Any]) -> np.ndarray:
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = np.asarray(stats["mean"], dtype=np.float32).reshape(shape)
    std = np.asarray(stats["std"], dtype=np.float32).reshape(shape)
    if mean.size != x.shape[1]:
        raise DataError(
            f"normaliser has {mean.size} channels but the data has {x.shape[1]} (shape {x.shape})"
        )
    return ((x - mean) / std).astype(np.float32)
