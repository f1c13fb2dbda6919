from __future__ import annotations

import logging

import pytest
import torch

from dlforge.data import DataBundle, DataConfig, SyntheticConfig, load_data


@pytest.fixture(autouse=True)
def _quiet_and_seeded() -> None:
    torch.manual_seed(0)
    logging.getLogger("dlforge").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def digits() -> DataBundle:
    return load_data(DataConfig(source="digits"), seed=0)


@pytest.fixture(scope="session")
def small_table() -> DataBundle:
    cfg = DataConfig(
        source="synthetic",
        synthetic=SyntheticConfig(n_samples=400, n_features=8, n_informative=5, n_classes=3),
    )
    return load_data(cfg, seed=0)
