"""A stored decision rule applied to probabilities: no torch here, so the inference server
applies it without loading torch (``train/decision.py`` chooses the rule)."""

from __future__ import annotations

from typing import Any

import numpy as np


def apply_threshold(proba: np.ndarray, decision: dict[str, Any] | None) -> np.ndarray:
    """Class ids from probabilities under a stored decision (argmax without a threshold)."""
    if decision and "threshold" in decision and proba.shape[1] == 2:
        return (proba[:, 1] >= decision["threshold"]).astype(np.int64)
    return proba.argmax(axis=1)
