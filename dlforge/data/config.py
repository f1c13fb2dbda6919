"""Configuration of a data source and its splits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dlforge.config import Config, ConfigError, check

SourceName = Literal[
    "digits", "mnist1d", "synthetic", "image_folder", "table", "npz", "cifar10", "mnist_idx"
]


@dataclass
class SyntheticConfig(Config):
    """scikit-learn ``make_classification`` knobs; ``weights`` sets class imbalance."""

    n_samples: int = 2000
    n_features: int = 20
    n_informative: int = 10
    n_classes: int = 3
    weights: list[float] | None = None
    class_sep: float = 1.0

    def validate(self) -> None:
        check(self.n_samples >= 2, "n_samples", self.n_samples, "must be >= 2")
        check(1 <= self.n_informative <= self.n_features, "n_informative", self.n_informative,
              f"must be in 1..n_features ({self.n_features})")  # fmt: skip
        check(self.n_classes >= 2, "n_classes", self.n_classes, "must be >= 2")
        if self.weights is not None:
            check(len(self.weights) in (self.n_classes - 1, self.n_classes), "weights",
                  self.weights, f"needs {self.n_classes} values")  # fmt: skip


@dataclass
class DataConfig(Config):
    source: SourceName = "digits"
    path: str | None = None  # file or folder for the file-based sources
    val_fraction: float = 0.15
    test_fraction: float = 0.2  # ignored where the source ships its own test split
    normalize: bool = True  # statistics from the training split only
    label_column: str = "label"  # table
    feature_columns: list[str] | None = None  # table; default: every column but the label
    x_key: str = "x"  # npz
    y_key: str = "y"  # npz
    image_size: list[int] = field(default_factory=lambda: [32, 32])  # image_folder: [H, W]
    image_mode: Literal["L", "RGB"] = "RGB"  # image_folder
    mnist1d_samples: int = 5000  # mnist1d: the paper's default (4000 train, 1000 test)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def validate(self) -> None:
        check(0.0 < self.val_fraction < 1.0, "val_fraction", self.val_fraction, "must be in (0, 1)")
        check(0.0 < self.test_fraction < 1.0, "test_fraction", self.test_fraction,
              "must be in (0, 1)")  # fmt: skip
        check(self.val_fraction + self.test_fraction < 1.0, "test_fraction", self.test_fraction,
              f"with val_fraction {self.val_fraction} leaves no data for training")  # fmt: skip
        check(len(self.image_size) == 2 and min(self.image_size) >= 1, "image_size",
              self.image_size, "must be [H, W] with positive sizes")  # fmt: skip
        check(self.mnist1d_samples >= 10, "mnist1d_samples", self.mnist1d_samples, "must be >= 10")
        file_sources = {"image_folder", "table", "npz", "cifar10", "mnist_idx"}
        if self.source in file_sources and not self.path:
            raise ConfigError(f"is required for source '{self.source}'", "path")
