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
class ImageAugmentConfig(Config):
    """Image augmentations (N, C, H, W); geometric ones from kornia. 0 switches one off."""

    crop_padding: int = 0  # random crop of the original size after zero-padding this many px
    hflip: float = 0.0  # probability of a horizontal flip (not for digits: 2 and 5 mirror)
    vflip: float = 0.0
    rotation: float = 0.0  # degrees, drawn in [-rotation, rotation]
    translate: float = 0.0  # share of the size, drawn in [-translate, translate]
    scale: float = 0.0  # zoom drawn in [1 - scale, 1 + scale]
    brightness: float = 0.0  # added offset in [-b, b] (inputs are normalised: in std units)
    contrast: float = 0.0  # deviation from the image mean scaled by [1 - c, 1 + c]
    erasing: float = 0.0  # probability of erasing a random rectangle (cutout)

    def validate(self) -> None:
        check(self.crop_padding >= 0, "crop_padding", self.crop_padding, "must be >= 0")
        for key in ("hflip", "vflip", "erasing"):
            check(0 <= getattr(self, key) <= 1, key, getattr(self, key), "must be in [0, 1]")
        for key in ("rotation", "translate", "scale", "brightness", "contrast"):
            check(getattr(self, key) >= 0, key, getattr(self, key), "must be >= 0")
        check(self.scale < 1 and self.contrast < 1, "scale", self.scale, "and contrast must be < 1")


@dataclass
class SignalAugmentConfig(Config):
    """1-D signal augmentations (N, C, L), hand-written (no library covers them on tensors)."""

    shift: int = 0  # circular shift by up to this many samples either way
    scale: float = 0.0  # amplitude multiplied by [1 - scale, 1 + scale]
    noise: float = 0.0  # Gaussian noise of this standard deviation
    time_warp: float = 0.0  # resampled by a factor in [1 - w, 1 + w], cropped/padded back

    def validate(self) -> None:
        for key in ("shift", "scale", "noise", "time_warp"):
            check(getattr(self, key) >= 0, key, getattr(self, key), "must be >= 0")
        check(self.time_warp < 1, "time_warp", self.time_warp, "must be < 1")


@dataclass
class MixConfig(Config):
    """Batch mixing with soft targets: mixup (Zhang et al., 2018), cutmix (Yun et al., 2019)."""

    mixup_alpha: float = 0.0  # Beta(alpha, alpha) mixing weight; 0 off
    cutmix_alpha: float = 0.0
    prob: float = 1.0  # share of batches mixed
    switch_prob: float = 0.5  # with both on: share of mixed batches that use cutmix

    def validate(self) -> None:
        for key in ("mixup_alpha", "cutmix_alpha"):
            check(getattr(self, key) >= 0, key, getattr(self, key), "must be >= 0")
        for key in ("prob", "switch_prob"):
            check(0 <= getattr(self, key) <= 1, key, getattr(self, key), "must be in [0, 1]")


@dataclass
class AugmentConfig(Config):
    """Training-batch augmentation, seeded per (seed, epoch, batch): reproducible on resume."""

    image: ImageAugmentConfig = field(default_factory=ImageAugmentConfig)
    signal: SignalAugmentConfig = field(default_factory=SignalAugmentConfig)
    table_noise: float = 0.0  # tables (N, F): Gaussian noise of this std (features normalised)
    mix: MixConfig = field(default_factory=MixConfig)
    seed: int = 0

    def validate(self) -> None:
        check(self.table_noise >= 0, "table_noise", self.table_noise, "must be >= 0")


@dataclass
class ImbalanceConfig(Config):
    """Imbalanced classes: a long-tailed training split for studies, SMOTE (tabular features),
    and a re-sampling sampler. Validation and test splits are never touched."""

    long_tail_ratio: float | None = None  # subsample the training split to this head/tail ratio
    smote: Literal["smote", "borderline", "adasyn"] | None = None  # tabular training split
    smote_k: int = 5
    sampler: Literal["over", "under", "balanced"] | None = None

    def validate(self) -> None:
        check(self.long_tail_ratio is None or self.long_tail_ratio >= 1, "long_tail_ratio",
              self.long_tail_ratio, "must be >= 1")  # fmt: skip
        check(self.smote_k >= 1, "smote_k", self.smote_k, "must be >= 1")


@dataclass
class DataConfig(Config):
    source: SourceName = "digits"
    path: str | None = None  # file or folder for the file-based sources
    val_fraction: float = 0.15
    test_fraction: float = 0.2  # ignored where the source ships its own test split
    normalize: bool = True  # statistics from the training split only
    label_column: str = "label"  # table
    group_column: str | None = None  # table: samples sharing a value stay in one fold
    feature_columns: list[str] | None = None  # table; default: every column but the label
    x_key: str = "x"  # npz
    y_key: str = "y"  # npz
    group_key: str | None = None  # npz: a group per sample, for grouped cross-validation
    image_size: list[int] = field(default_factory=lambda: [32, 32])  # image_folder: [H, W]
    image_mode: Literal["L", "RGB"] = "RGB"  # image_folder
    mnist1d_samples: int = 5000  # mnist1d: the paper's default (4000 train, 1000 test)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train_fraction: float = 1.0  # keep this share of the training split (small-data studies)
    imbalance: ImbalanceConfig = field(default_factory=ImbalanceConfig)

    def validate(self) -> None:
        check(0.0 < self.val_fraction < 1.0, "val_fraction", self.val_fraction, "must be in (0, 1)")
        check(0.0 < self.test_fraction < 1.0, "test_fraction", self.test_fraction,
              "must be in (0, 1)")  # fmt: skip
        check(self.val_fraction + self.test_fraction < 1.0, "test_fraction", self.test_fraction,
              f"with val_fraction {self.val_fraction} leaves no data for training")  # fmt: skip
        check(len(self.image_size) == 2 and min(self.image_size) >= 1, "image_size",
              self.image_size, "must be [H, W] with positive sizes")  # fmt: skip
        check(self.mnist1d_samples >= 10, "mnist1d_samples", self.mnist1d_samples, "must be >= 10")
        check(0 < self.train_fraction <= 1, "train_fraction", self.train_fraction,
              "must be in (0, 1]")  # fmt: skip
        file_sources = {"image_folder", "table", "npz", "cifar10", "mnist_idx"}
        if self.source in file_sources and not self.path:
            raise ConfigError(f"is required for source '{self.source}'", "path")
