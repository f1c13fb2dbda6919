"""The in-memory containers every data source produces."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset, default_collate

from dlforge.data.normalize import DataError


@dataclass
class RawData:
    """What a source returns: features ``x`` (N, ...) float32 and labels ``y`` (N,) int64.

    ``x_test``/``y_test`` are set when the source ships its own test split (MNIST-1D, CIFAR-10,
    MNIST IDX); otherwise the test split is carved out of ``x``.
    """

    x: np.ndarray
    y: np.ndarray
    class_names: list[str]
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    groups: np.ndarray | None = None  # (N,) a group per sample, for grouped cross-validation


@dataclass
class DataBundle:
    """Train/val/test splits as tensors, ready for a model, plus what is needed to rebuild them."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    class_names: list[str]
    preprocessing: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)  # what was done to the splits (SMOTE)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train[0].shape[1:])

    def loader(
        self,
        split: str,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        *,
        transform: Callable[[torch.Tensor, torch.Tensor], tuple[Any, Any]] | None = None,
        sampler: Sampler[int] | None = None,
        num_workers: int = 0,
    ) -> DataLoader:
        """Batches of ``split``. ``transform(x, y) -> (x, y)`` runs on each collated batch
        (in the worker processes when ``num_workers > 0``); ``sampler`` replaces shuffling
        (class-balanced sampling, bootstrap samples, a distributed shard)."""
        x, y = getattr(self, split)
        collate = None
        if transform is not None:

            def collate(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[Any, Any]:
                xb, yb = default_collate(items)
                return transform(xb, yb)

        return DataLoader(
            TensorDataset(x, y),
            batch_size=batch_size,
            shuffle=shuffle if sampler is None else False,
            generator=generator,
            sampler=sampler,
            num_workers=num_workers,
            collate_fn=collate,
        )

    def summary(self) -> dict[str, Any]:
        return {
            "classes": self.class_names,
            "input_shape": list(self.input_shape),
            "sizes": {s: len(getattr(self, s)[1]) for s in ("train", "val", "test")},
            "train_class_counts": np.bincount(
                self.train[1].numpy(), minlength=self.num_classes
            ).tolist(),
            **self.notes,
        }


def encode_labels(labels: np.ndarray, where: str) -> tuple[np.ndarray, list[str]]:
    """Map arbitrary labels (ints or strings) to 0..K-1; class names are the sorted originals."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"{where}: labels must be one-dimensional, got shape {labels.shape}")
    if len(labels) == 0:
        raise DataError(f"{where}: no samples")
    if labels.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(labels))
        if len(bad):
            raise DataError(f"{where}: labels are NaN/inf at rows {bad[:10].tolist()}")
        if not np.all(labels == np.round(labels)):
            raise DataError(f"{where}: labels must be class ids, got non-integer values")
        labels = labels.astype(np.int64)
    classes, codes = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise DataError(
            f"{where}: every sample has the label {classes[0]!r}; a classifier needs at least "
            "two classes"
        )
    return codes.astype(np.int64), [str(c) for c in classes]


def check_features(
    x: np.ndarray, where: str, columns: list[str] | None = None, keep_integers: bool = False
) -> np.ndarray:
    """Return ``x`` as float32, refusing NaN/inf and naming the rows and columns that hold them.

    With ``keep_integers`` integer features (token ids) stay integers (int64) instead.
    """
    raw = np.asarray(x)
    if keep_integers and raw.dtype.kind in "iu":
        if raw.ndim < 2:
            raise DataError(f"{where}: features need shape (N, ...), got {raw.shape}")
        return raw.astype(np.int64)
    try:
        x = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: features are not numeric ({exc})") from None
    if x.ndim < 2:
        raise DataError(f"{where}: features need shape (N, ...), got {x.shape}")
    bad = ~np.isfinite(x.reshape(len(x), -1))
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        cols = np.flatnonzero(bad.any(axis=0))
        col_names = [columns[c] for c in cols[:10]] if columns else cols[:10].tolist()
        raise DataError(
            f"{where}: NaN/inf in {int(bad.sum())} values; rows {rows[:10].tolist()}"
            f"{' ...' if len(rows) > 10 else ''}, columns {col_names}"
            f"{' ...' if len(cols) > 10 else ''}"
        )
    return x
