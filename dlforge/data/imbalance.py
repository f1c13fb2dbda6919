"""Imbalanced classes: a long-tail maker for testing, and over-/under-sampling for torch.

``long_tail_indices(y, ratio)`` subsamples a split with the exponential class profile of Cui
et al. (2019): class c keeps n_max * ratio^(-c / (K - 1)) samples, so class 0 is the head and
the last class has ``ratio`` times fewer (the split is left balanced elsewhere).

The samplers are ``torch.utils.data.Sampler``s over a split's indices, redrawn each epoch from
``(seed, epoch)`` (the Trainer calls ``set_epoch``), so a resumed run draws what it would have
drawn. Under DDP each process takes its share (``shard(world, rank)``): every process draws the
same epoch and keeps every world-th index, as ``DistributedSampler`` does.

- ``OverSampler``: every class drawn as often as the largest (minority samples repeated).
- ``UnderSampler``: every class cut to the smallest's count (a fresh subset each epoch).
- ``ClassBalancedSampler``: ``samples_per_class`` draws of each class per epoch, in batches
  of equal class shares when ``batch_size`` is a multiple of the number of classes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from dlforge.config import ConfigError


def _labels(y: Any) -> np.ndarray:
    arr = np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise ConfigError(f"labels must be a 1-D array of class ids; got shape {arr.shape}")
    return arr.astype(np.int64)


def long_tail_indices(y: Any, ratio: float, seed: int = 0, n_max: int | None = None) -> np.ndarray:
    """Indices of a long-tailed subset of ``y``: class c keeps round(n_max * ratio^(-c/(K-1)))
    samples (at least 1), drawn without replacement. ``n_max`` defaults to the smallest class
    count (so every class can give what it must); classes are ranked by their id."""
    labels = _labels(y)
    if ratio < 1:
        raise ConfigError(f"the imbalance ratio must be >= 1; got {ratio}", "ratio")
    classes = np.unique(labels)
    counts = np.bincount(labels)[classes]
    top = int(counts.min()) if n_max is None else n_max
    if top > counts.min():
        raise ConfigError(
            f"n_max {top} is more than the smallest class holds ({int(counts.min())})", "n_max"
        )
    k = len(classes)
    rng = np.random.default_rng(seed)
    keep = []
    for rank, c in enumerate(classes):
        n = max(1, round(top * ratio ** (-rank / max(1, k - 1))))
        keep.append(rng.choice(np.flatnonzero(labels == c), n, replace=False))
    return np.sort(np.concatenate(keep))


def profile(y: Any, num_classes: int | None = None) -> dict[str, Any]:
    """Class counts and the imbalance ratio (largest / smallest non-empty class)."""
    labels = _labels(y)
    counts = np.bincount(labels, minlength=num_classes or 0)
    present = counts[counts > 0]
    return {"counts": counts.tolist(), "ratio": float(present.max() / present.min())}


class _EpochSampler(Sampler[int]):
    """The shared machinery: ``draw(rng)`` gives one epoch's indices (all processes alike)."""

    def __init__(self, labels: Any, seed: int = 0) -> None:
        self.labels = _labels(labels)
        self.by_class = [np.flatnonzero(self.labels == c) for c in np.unique(self.labels)]
        self.seed = seed
        self.epoch = 0
        self.world, self.rank = 1, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shard(self, world: int, rank: int) -> _EpochSampler:
        """This sampler for process ``rank`` of ``world`` (its share of every epoch)."""
        if not 0 <= rank < world:
            raise ConfigError(f"rank {rank} is not in 0..{world - 1}")
        self.world, self.rank = world, rank
        return self

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def _epoch_indices(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        idx = self.draw(rng)
        if self.world > 1:  # pad with the epoch's first indices, as DistributedSampler does
            total = -(-len(idx) // self.world) * self.world
            idx = np.concatenate([idx, idx[: total - len(idx)]])[self.rank :: self.world]
        return idx

    def __iter__(self) -> Iterator[int]:
        return iter(self._epoch_indices().tolist())

    def __len__(self) -> int:
        n = self.epoch_size()
        return -(-n // self.world)

    def epoch_size(self) -> int:
        raise NotImplementedError


class OverSampler(_EpochSampler):
    """Random over-sampling: each class as many draws as the largest class has samples (every
    sample of a class at least once, the rest drawn with replacement), shuffled."""

    def epoch_size(self) -> int:
        return max(len(i) for i in self.by_class) * len(self.by_class)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        n = max(len(i) for i in self.by_class)
        parts = [np.concatenate([idx, rng.choice(idx, n - len(idx), replace=True)])
                 for idx in self.by_class]  # fmt: skip
        return rng.permutation(np.concatenate(parts))


class UnderSampler(_EpochSampler):
    """Random under-sampling: each class cut to the smallest class's count, a new subset every
    epoch (over the epochs the head classes are all seen), or with ``fixed`` one subset drawn
    from the seed alone and only reshuffled (a member of an EasyEnsemble)."""

    def __init__(self, labels: Any, seed: int = 0, fixed: bool = False) -> None:
        super().__init__(labels, seed)
        self.fixed = fixed

    def epoch_size(self) -> int:
        return min(len(i) for i in self.by_class) * len(self.by_class)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        n = min(len(i) for i in self.by_class)
        pick = np.random.default_rng(self.seed) if self.fixed else rng
        parts = [pick.choice(idx, n, replace=False) for idx in self.by_class]
        return rng.permutation(np.concatenate(parts))


class ClassBalancedSampler(_EpochSampler):
    """``samples_per_class`` draws of every class each epoch (with replacement where a class
    has fewer), ordered so that each run of ``batch_size`` indices holds equal class shares
    (``batch_size`` a multiple of the number of classes; otherwise just shuffled)."""

    def __init__(
        self,
        labels: Any,
        samples_per_class: int | None = None,
        batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(labels, seed)
        k = len(self.by_class)
        self.per_class = samples_per_class or int(np.mean([len(i) for i in self.by_class]))
        if self.per_class < 1:
            raise ConfigError(f"samples_per_class must be >= 1; got {self.per_class}")
        self.batch_size = batch_size if batch_size and batch_size % k == 0 else None

    def epoch_size(self) -> int:
        return self.per_class * len(self.by_class)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        parts = [rng.choice(idx, self.per_class, replace=len(idx) < self.per_class)
                 for idx in self.by_class]  # fmt: skip
        if self.batch_size is None:
            return rng.permutation(np.concatenate(parts))
        share = self.batch_size // len(parts)  # interleave: each batch takes `share` per class
        columns = np.stack([rng.permutation(p) for p in parts])  # (K, per_class)
        out = []
        for start in range(0, self.per_class, share):
            block = columns[:, start : start + share].reshape(-1)
            out.append(rng.permutation(block))
        return np.concatenate(out)


SAMPLERS = {"over": OverSampler, "under": UnderSampler, "balanced": ClassBalancedSampler}


def make_sampler(
    kind: str, labels: Any, seed: int = 0, batch_size: int | None = None, **kwargs: Any
) -> Sampler[int]:
    """``over``, ``under`` or ``balanced`` over ``labels`` (a split's class ids)."""
    if kind not in SAMPLERS:
        raise ConfigError(f"sampler '{kind}' is unknown; choose one of {', '.join(SAMPLERS)}")
    if kind == "balanced":
        return ClassBalancedSampler(labels, batch_size=batch_size, seed=seed, **kwargs)
    return SAMPLERS[kind](labels, seed)


def resample_counts(sampler: Sampler[int], labels: Any) -> list[int]:
    """Class counts of one epoch of ``sampler`` (for the report's before/after histogram)."""
    y = _labels(labels)
    return np.bincount(y[list(iter(sampler))], minlength=int(y.max()) + 1).tolist()
