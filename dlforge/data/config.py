"""Configuration of a data source and its splits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dlforge.config import ConfigError

SourceName = Literal[
    "digits", "mnist1d", "synthetic", "image_folder", "table", "npz", "cifar10", "mnist_idx"
]


@dataclass
class SyntheticConfig:
    """scikit-learn ``make_classification`` knobs; ``weights`` sets class imbalance."""

    n_samples: int = 2000
    n_features: int = 20
    n_informative: int = 10
    n_classes: int = 3
    weights: list[float] | None = None
    class_sep: float = 1.0

    def validate(self) -> None:
        if not 1 <= self.n_informative <= self.n_features:
            raise ConfigError(
                f"n_informative ({self.n_informative}) must be in 1..n_features ({self.n_features})"
            )
        if self.n_classes < 2:
            raise ConfigError(f"n_classes must be >= 2, got {self.n_classes}")
        if self.weights is not None and len(self.weights) not in (
            self.n_classes - 1,
            self.n_classes,
        ):
            raise ConfigError(f"weights needs {self.n_classes} values, got {len(self.weights)}")


@dataclass
class DataConfig:
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
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError("val_fraction + test_fraction must leave data for training")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ConfigError(
                f"image_size must be [H, W] with positive sizes, got {self.image_size}"
            )
        file_sources = {"image_folder", "table", "npz", "cifar10", "mnist_idx"}
        if self.source in file_sources and not self.path:
            raise ConfigError(f"data.path is required for source '{self.source}'")
