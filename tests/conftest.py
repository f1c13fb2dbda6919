from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

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


@pytest.fixture(scope="session")
def small_cnn(digits: DataBundle) -> nn.Module:
    """A digits CNN (16, 32 channels) trained for 8 epochs; tests that change it take a copy."""
    from dlforge.models import create_model
    from dlforge.train import OptimizerConfig, TrainConfig, Trainer

    torch.manual_seed(0)
    model = create_model("cnn", digits.input_shape, digits.num_classes, channels=[16, 32])
    cfg = TrainConfig(epochs=8, progress=False, optimizer=OptimizerConfig(lr=3e-3))
    Trainer(model, cfg).fit(digits.loader("train", 64, True, torch.Generator().manual_seed(0)))
    return model.eval()
