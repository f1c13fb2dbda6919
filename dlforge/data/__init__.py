"""Data sources, splits and loaders. ``load_data(DataConfig(...), seed)`` is the entry point."""

from __future__ import annotations

import numpy as np
import torch

from dlforge.data import builtin, files
from dlforge.data.config import DataConfig, SyntheticConfig
from dlforge.data.dataset import DataBundle, DataError, RawData, check_features, encode_labels
from dlforge.data.splits import apply_normalizer, fit_normalizer, stratified_split


def read_source(cfg: DataConfig, seed: int = 0) -> RawData:
    """Read the configured source into memory (no splitting, no normalisation)."""
    match cfg.source:
        case "digits":
            return builtin.digits()
        case "mnist1d":
            return builtin.mnist1d(cfg.mnist1d_samples)
        case "synthetic":
            return builtin.synthetic(cfg.synthetic, seed)
        case "image_folder":
            h, w = cfg.image_size
            return files.image_folder(_path(cfg), (h, w), cfg.image_mode)
        case "table":
            return files.table(_path(cfg), cfg.label_column, cfg.feature_columns)
        case "npz":
            return files.npz(_path(cfg), cfg.x_key, cfg.y_key)
        case "cifar10":
            return files.cifar10(_path(cfg))
        case "mnist_idx":
            return files.mnist_idx(_path(cfg))
    raise DataError(f"unknown data source '{cfg.source}'")


def _path(cfg: DataConfig) -> str:
    if not cfg.path:
        raise DataError(f"data source '{cfg.source}' needs data.path")
    return cfg.path


def load_data(cfg: DataConfig, seed: int = 0, normalizer: dict | None = None) -> DataBundle:
    """Read, split (seeded, stratified) and normalise with training-split statistics.

    ``normalizer`` (a checkpoint's stored statistics) is applied instead of refitting.
    """
    raw = read_source(cfg, seed)
    where = f"data source '{cfg.source}'" + (f" at {cfg.path}" if cfg.path else "")
    present = np.unique(raw.y)
    if len(present) < 2:
        raise DataError(
            f"{where}: every sample has class {raw.class_names[int(present[0])]!r} "
            "(a classifier needs at least two)"
            if len(present)
            else f"{where}: no samples"
        )
    x = check_features(raw.x, where)
    if raw.x_test is not None and raw.y_test is not None:
        x_test, y_test = check_features(raw.x_test, where + " (test split)"), raw.y_test
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(f"{where}: test samples {x_test.shape[1:]} vs train {x.shape[1:]}")
        x_rest, y_rest = x, raw.y
    else:
        x_rest, y_rest, x_test, y_test = stratified_split(x, raw.y, cfg.test_fraction, seed, where)
    val_share = (
        cfg.val_fraction if raw.x_test is not None else cfg.val_fraction / (1 - cfg.test_fraction)
    )
    x_train, y_train, x_val, y_val = stratified_split(x_rest, y_rest, val_share, seed + 1, where)

    preprocessing: dict = {"source": cfg.source, "input_shape": list(x.shape[1:])}
    if cfg.normalize:
        stats = normalizer if normalizer is not None else fit_normalizer(x_train)
        preprocessing["normalize"] = stats
        x_train, x_val, x_test = (apply_normalizer(a, stats) for a in (x_train, x_val, x_test))

    def pair(a: np.ndarray, b: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(np.ascontiguousarray(a)), torch.from_numpy(b.astype(np.int64))

    return DataBundle(
        train=pair(x_train, y_train),
        val=pair(x_val, y_val),
        test=pair(x_test, y_test),
        class_names=raw.class_names,
        preprocessing=preprocessing,
    )


__all__ = [
    "DataBundle",
    "DataConfig",
    "DataError",
    "RawData",
    "SyntheticConfig",
    "apply_normalizer",
    "check_features",
    "encode_labels",
    "fit_normalizer",
    "load_data",
    "read_source",
    "stratified_split",
]
