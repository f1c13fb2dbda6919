"""Long-tail maker and the over-/under-/class-balanced samplers: their class counts, their
determinism per (seed, epoch), and their DDP shards."""

from __future__ import annotations

import numpy as np
import pytest

from dlforge.config import ConfigError
from dlforge.data.imbalance import (
    ClassBalancedSampler,
    OverSampler,
    UnderSampler,
    long_tail_indices,
    make_sampler,
    profile,
    resample_counts,
)

Y = np.repeat(np.arange(5), [400, 150, 60, 20, 6])


def test_long_tail_follows_the_exponential_profile() -> None:
    y = np.repeat(np.arange(10), 100)
    idx = long_tail_indices(y, ratio=100, seed=0)
    counts = np.bincount(y[idx])
    expected = [max(1, round(100 * 100 ** (-c / 9))) for c in range(10)]
    assert counts.tolist() == expected  # Cui et al.: n_c = n_max * ratio^(-c / (K - 1))
    assert counts[0] / counts[-1] == 100 and profile(y[idx])["ratio"] == 100
    assert np.array_equal(idx, long_tail_indices(y, 100, seed=0))
    assert not np.array_equal(idx, long_tail_indices(y, 100, seed=1))
    assert len(np.unique(idx)) == len(idx)  # without replacement
    with pytest.raises(ConfigError, match="ratio must be >= 1"):
        long_tail_indices(y, 0.5)
    with pytest.raises(ConfigError, match="n_max 200 is more than"):
        long_tail_indices(y, 10, n_max=200)


def test_over_and_under_sampling_balance_every_epoch() -> None:
    over = OverSampler(Y, seed=0)
    assert resample_counts(over, Y) == [400] * 5 and len(over) == 2000
    first = list(over)
    for c in range(5):  # every sample of a minority class appears at least once
        assert set(first) >= set(np.flatnonzero(c == Y))
    under = UnderSampler(Y, seed=0)
    assert resample_counts(under, Y) == [6] * 5 and len(under) == 30
    seen = set()
    for epoch in range(30):  # a fresh head subset each epoch
        under.set_epoch(epoch)
        seen |= set(under)
    assert len(seen & set(np.flatnonzero(Y == 0))) > 100


def test_a_resumed_run_draws_the_same_epochs() -> None:
    a, b = OverSampler(Y, seed=3), OverSampler(Y, seed=3)
    a.set_epoch(4)
    b.set_epoch(4)
    assert list(a) == list(b)
    b.set_epoch(5)
    assert list(a) != list(b)
    assert list(OverSampler(Y, seed=4)) != list(OverSampler(Y, seed=3))


def test_class_balanced_batches_hold_equal_shares() -> None:
    s = ClassBalancedSampler(Y, samples_per_class=40, batch_size=10, seed=0)
    idx = np.array(list(s))
    assert len(idx) == 200
    for start in range(0, 200, 10):
        assert np.bincount(Y[idx[start : start + 10]], minlength=5).tolist() == [2] * 5
    assert len(set(idx[Y[idx] == 0])) == 40  # the head drawn without replacement


def test_ddp_shards_split_one_epoch_between_processes() -> None:
    whole = np.array(list(OverSampler(Y, seed=1)))
    shards = [np.array(list(OverSampler(Y, seed=1).shard(3, r))) for r in range(3)]
    assert [len(s) for s in shards] == [len(OverSampler(Y).shard(3, 0))] * 3
    interleaved = np.stack(shards, 1).reshape(-1)[: len(whole)]
    assert np.array_equal(interleaved, whole)  # rank r keeps every 3rd index from r on
    with pytest.raises(ConfigError, match="rank 3 is not in 0..2"):
        OverSampler(Y).shard(3, 3)


def test_make_sampler_names_the_kinds() -> None:
    assert isinstance(make_sampler("balanced", Y, batch_size=10), ClassBalancedSampler)
    with pytest.raises(ConfigError, match="sampler 'smote' is unknown"):
        make_sampler("smote", Y)
