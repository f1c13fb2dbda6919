"""From a configured source to train/val/test tensors, in three separate steps.

``read_source`` reads the data into memory, ``split_data`` makes the seeded stratified splits
(keeping a share of the training split for small-data studies), ``normalize_splits`` fits the
per-channel statistics on the training split only and applies them to all three. ``load_data``
runs the three.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dlforge.config import ConfigError
from dlforge.data import builtin, files
from dlforge.data.config import DataConfig
from dlforge.data.dataset import DataBundle, DataError, RawData, check_features
from dlforge.data.normalize import apply_normalizer
from dlforge.data.splits import fit_normalizer, stratified_split

Arrays = tuple[np.ndarray, np.ndarray]


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
            return files.table(_path(cfg), cfg.label_column, cfg.feature_columns, cfg.group_column)
        case "npz":
            return files.npz(_path(cfg), cfg.x_key, cfg.y_key, cfg.group_key)
        case "cifar10":
            return files.cifar10(_path(cfg))
        case "mnist_idx":
            return files.mnist_idx(_path(cfg))
    raise DataError(f"unknown data source '{cfg.source}'")


def _path(cfg: DataConfig) -> str:
    if not cfg.path:
        raise DataError(f"data source '{cfg.source}' needs data.path")
    return cfg.path


def where_of(cfg: DataConfig) -> str:
    return f"data source '{cfg.source}'" + (f" at {cfg.path}" if cfg.path else "")


def split_indices(raw: RawData, cfg: DataConfig, seed: int) -> dict[str, np.ndarray]:
    """Seeded stratified train/val/test sample indices into ``raw`` (the test split indexes
    ``raw.x_test`` where the source ships one); ``train_fraction`` keeps a stratified share of
    the training split."""
    where = where_of(cfg)
    present = np.unique(raw.y)
    if len(present) < 2:
        raise DataError(
            f"{where}: every sample has class {raw.class_names[int(present[0])]!r} "
            "(a classifier needs at least two)"
            if len(present)
            else f"{where}: no samples"
        )
    index = np.arange(len(raw.y))
    if raw.x_test is not None and raw.y_test is not None:
        rest, test = index, np.arange(len(raw.y_test))
        val_share = cfg.val_fraction
    else:
        rest, _, test, _ = stratified_split(index, raw.y, cfg.test_fraction, seed, where)
        val_share = cfg.val_fraction / (1 - cfg.test_fraction)
    train, _, val, _ = stratified_split(rest, raw.y[rest], val_share, seed + 1, where)
    if cfg.train_fraction < 1:
        train, _, _, _ = stratified_split(
            train, raw.y[train], 1 - cfg.train_fraction, seed + 2, where
        )
    if cfg.imbalance.long_tail_ratio is not None:  # a long-tailed training split (Cui et al.)
        from dlforge.data.imbalance import long_tail_indices

        train = train[long_tail_indices(raw.y[train], cfg.imbalance.long_tail_ratio, seed + 3)]
    return {"train": train, "val": val, "test": test}


def split_data(raw: RawData, cfg: DataConfig, seed: int) -> dict[str, Arrays]:
    """Checked features of each split (see ``split_indices``)."""
    where = where_of(cfg)
    keep_ints = not cfg.normalize
    x = check_features(raw.x, where, keep_integers=keep_ints)
    idx = split_indices(raw, cfg, seed)
    out = {k: (x[idx[k]], raw.y[idx[k]]) for k in ("train", "val")}
    if raw.x_test is not None and raw.y_test is not None:
        x_test = check_features(raw.x_test, where + " (test split)", keep_integers=keep_ints)
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(f"{where}: test samples {x_test.shape[1:]} vs train {x.shape[1:]}")
        out["test"] = (x_test, raw.y_test)
    else:
        out["test"] = (x[idx["test"]], raw.y[idx["test"]])
    return out


def normalize_splits(
    splits: dict[str, Arrays], normalizer: dict[str, Any] | None = None
) -> tuple[dict[str, Arrays], dict[str, Any]]:
    """Per-channel statistics fitted on the training split (or ``normalizer``, a checkpoint's
    stored ones) applied to every split; returns the splits and the statistics."""
    stats = normalizer if normalizer is not None else fit_normalizer(splits["train"][0])
    out = {k: (apply_normalizer(x, stats), y) for k, (x, y) in splits.items()}
    return out, stats


def bundle(
    splits: dict[str, Arrays],
    class_names: list[str],
    source: str,
    normalize: bool = True,
    normalizer: dict[str, Any] | None = None,
) -> DataBundle:
    """A DataBundle of ``splits`` (train, val, test arrays), normalised with training-split
    statistics (or ``normalizer``) when ``normalize``."""
    preprocessing: dict[str, Any] = {
        "source": source,
        "input_shape": list(splits["train"][0].shape[1:]),
    }
    if normalize:
        splits, preprocessing["normalize"] = normalize_splits(splits, normalizer)

    def pair(a: np.ndarray, b: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(np.ascontiguousarray(a)), torch.from_numpy(b.astype(np.int64))

    return DataBundle(
        train=pair(*splits["train"]),
        val=pair(*splits["val"]),
        test=pair(*splits["test"]),
        class_names=class_names,
        preprocessing=preprocessing,
    )


def load_data(cfg: DataConfig, seed: int = 0, normalizer: dict | None = None) -> DataBundle:
    """Read, split (seeded, stratified) and normalise with training-split statistics.

    ``normalizer`` (a checkpoint's stored statistics) is applied instead of refitting.
    """
    raw = read_source(cfg, seed)
    splits = split_data(raw, cfg, seed)
    data = bundle(splits, raw.class_names, cfg.source, cfg.normalize, normalizer)
    if cfg.imbalance.smote is not None:  # after normalisation: neighbours in comparable units
        data = smote_train_split(data, cfg, seed)
    return data


def smote_train_split(data: DataBundle, cfg: DataConfig, seed: int) -> DataBundle:
    """The training split with SMOTE's (or its relatives') synthetic minority samples."""
    from dlforge.data.smote import smote_features

    x, y = data.train
    method = cfg.imbalance.smote or "smote"
    before = np.bincount(y.numpy(), minlength=data.num_classes).tolist()
    try:
        xs, ys = smote_features(x.numpy(), y.numpy(), method, seed, cfg.imbalance.smote_k)
    except ConfigError as exc:
        raise DataError(f"{where_of(cfg)}: data.imbalance.smote: {exc}") from None
    data.train = (torch.from_numpy(xs), torch.from_numpy(ys.astype(np.int64)))
    data.notes["smote"] = {"method": method, "counts_before": before,
                           "counts_after": np.bincount(ys, minlength=data.num_classes).tolist()}  # fmt: skip
    return data
