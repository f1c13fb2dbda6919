"""Configuration of a training run: optimizer, LR schedule, precision, stopping, monitoring."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from dlforge.config import Config, ConfigError, check
from dlforge.robust.config import AdversarialConfig


@dataclass
class OptimizerConfig(Config):
    name: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9  # sgd
    nesterov: bool = False  # sgd
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam, adamw
    weight_decay: float = 0.0
    # Decaying biases and norm-layer scales shrinks what should not be shrunk; exempt by default.
    decay_bias_and_norm: bool = False

    def validate(self) -> None:
        check(self.lr > 0, "lr", self.lr, "must be positive")
        check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        check(self.momentum >= 0, "momentum", self.momentum, "must be >= 0")
        if self.nesterov and (self.name != "sgd" or self.momentum <= 0):
            raise ConfigError("needs name: sgd and momentum > 0", "nesterov")
        check(len(self.betas) == 2, "betas", self.betas, "must have two values")
        check(all(0 <= b < 1 for b in self.betas), "betas", self.betas, "must be in [0, 1)")


@dataclass
class ScheduleConfig(Config):
    """LR schedule, applied per optimizer step; epochs in ``step_size``/``milestones``."""

    name: Literal[
        "constant", "step", "multistep", "cosine", "cyclic_cosine", "onecycle", "plateau"
    ] = "constant"
    warmup_steps: int = 0  # linear warm-up from lr/warmup_steps to lr, before the schedule
    step_size: int = 10  # step: epochs between decays
    milestones: list[int] = field(default_factory=list)  # multistep: epochs at which to decay
    gamma: float = 0.1  # step, multistep: decay factor
    min_lr: float = 0.0  # cosine floor
    cycles: int = 5  # cyclic_cosine: restarts over the run (a snapshot at the end of each)
    pct_start: float = 0.3  # onecycle: share of steps spent rising
    div_factor: float = 25.0  # onecycle: start lr = lr / div_factor
    final_div_factor: float = 1e4  # onecycle: final lr = start lr / final_div_factor
    plateau_monitor: str = "val_loss"
    plateau_patience: int = 5  # plateau: epochs without improvement before a decay
    plateau_factor: float = 0.1
    plateau_threshold: float = 1e-4  # relative improvement that counts (as ReduceLROnPlateau)

    def validate(self) -> None:
        check(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, "must be >= 0")
        if self.name == "multistep" and not self.milestones:
            raise ConfigError("the multistep schedule needs milestones (epochs)", "milestones")
        check(self.step_size >= 1, "step_size", self.step_size, "must be >= 1")
        check(self.cycles >= 1, "cycles", self.cycles, "must be >= 1")
        check(0 < self.gamma <= 1, "gamma", self.gamma, "must be in (0, 1]")
        check(self.min_lr >= 0, "min_lr", self.min_lr, "must be >= 0")
        check(0 < self.pct_start < 1, "pct_start", self.pct_start, "must be in (0, 1)")
        check(self.plateau_patience >= 0, "plateau_patience", self.plateau_patience, "must be >= 0")
        check(
            0 < self.plateau_factor < 1, "plateau_factor", self.plateau_factor, "must be in (0, 1)"
        )


@dataclass
class EarlyStoppingConfig(Config):
    """The monitored metric picks the best checkpoint; ``patience`` (if set) stops the run."""

    monitor: str = "val_loss"
    mode: Literal["auto", "min", "max"] = "auto"  # auto: min for *loss*, max otherwise
    patience: int | None = None
    min_delta: float = 0.0

    def validate(self) -> None:
        if self.patience is not None:
            check(self.patience >= 0, "patience", self.patience, "must be >= 0")
        check(self.min_delta >= 0, "min_delta", self.min_delta, "must be >= 0")


@dataclass
class GradMonitorConfig(Config):
    every_n_steps: int = 10  # sample per-layer gradient norms this often (0 turns it off)
    vanishing_below: float = 1e-7
    exploding_above: float = 1e3

    def validate(self) -> None:
        check(self.every_n_steps >= 0, "every_n_steps", self.every_n_steps, "must be >= 0")


@dataclass
class LossConfig(Config):
    """The training loss (``train.loss``); the imbalance losses take the training split's class
    counts. ``weights`` picks class weights for ``weighted`` (and ``focal``'s alpha when
    ``focal_weights``): inverse frequency, inverse square root, or the effective number of
    samples with ``beta`` (Cui et al. 2019)."""

    name: Literal["cross_entropy", "weighted", "focal", "ldam", "logit_adjusted"] = "cross_entropy"
    weights: Literal["inverse", "inverse_sqrt", "effective"] = "inverse"
    beta: float = 0.999
    gamma: float = 2.0  # focal
    focal_weights: bool = False  # focal: class weights as alpha
    max_margin: float = 0.5  # LDAM
    scale: float = 30.0  # LDAM
    drw_epoch: int | None = None  # LDAM: deferred re-weighting from this epoch (0-based)
    tau: float = 1.0  # logit adjustment

    def validate(self) -> None:
        check(0 <= self.beta < 1, "beta", self.beta, "must be in [0, 1)")
        check(self.gamma >= 0, "gamma", self.gamma, "must be >= 0")
        check(self.max_margin > 0 and self.scale > 0, "max_margin", self.max_margin,
              "and scale must be > 0")  # fmt: skip
        check(self.drw_epoch is None or self.drw_epoch >= 0, "drw_epoch", self.drw_epoch,
              "must be >= 0")  # fmt: skip


@dataclass
class DecoupledConfig(Config):
    """Classifier re-training after training (Kang et al. 2020): the head retrained on the
    backbone's embeddings of the training split, class-balanced by SMOTE or re-sampling."""

    enabled: bool = False
    method: Literal["smote", "borderline", "adasyn", "oversample"] = "smote"
    epochs: int = 30
    lr: float = 1e-2
    k_neighbors: int = 5

    def validate(self) -> None:
        check(self.epochs >= 1, "epochs", self.epochs, "must be >= 1")
        check(self.lr > 0, "lr", self.lr, "must be positive")
        check(self.k_neighbors >= 1, "k_neighbors", self.k_neighbors, "must be >= 1")


@dataclass
class DecisionConfig(Config):
    """How the trained model decides (``train.decision``), set after training on the
    validation split: post-hoc logit adjustment (folded into the head's bias) and, for two
    classes, a threshold on P(class 1) maximising F1 or reaching ``target_recall``."""

    logit_adjust_tau: float | None = None
    threshold: Literal["f1", "recall"] | None = None
    target_recall: float = 0.9

    def validate(self) -> None:
        check(self.logit_adjust_tau is None or self.logit_adjust_tau >= 0, "logit_adjust_tau",
              self.logit_adjust_tau, "must be >= 0")  # fmt: skip
        check(0 < self.target_recall <= 1, "target_recall", self.target_recall,
              "must be in (0, 1]")  # fmt: skip


@dataclass
class TrainConfig(Config):
    epochs: int = 20
    batch_size: int = 64
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    label_smoothing: float = 0.0
    loss: LossConfig = field(default_factory=LossConfig)
    decoupled: DecoupledConfig = field(default_factory=DecoupledConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    l1: float = 0.0  # L1 penalty on weights (not biases or norm layers)
    # Explicit L2 penalty (coefficient/2 * sum w^2 in the loss) on the same weights. Under SGD it
    # equals weight decay; under Adam it does not (Adam rescales it, AdamW's decay is not).
    l2: float = 0.0
    bn_l1: float = 0.0  # L1 penalty on batch-norm scales (network slimming, Liu et al., 2017)
    clip_grad_norm: float | None = None
    clip_grad_value: float | None = None
    accumulate_steps: int = 1
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool | Literal["auto"] = "auto"  # auto: on for 2-D conv nets
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    restore_best: bool = True  # end the run with the best checkpoint's weights
    on_nonfinite: Literal["stop", "skip"] = "stop"
    grad_monitor: GradMonitorConfig = field(default_factory=GradMonitorConfig)
    deterministic: bool = False
    progress: bool | Literal["auto"] = "auto"  # auto: when stderr is a terminal
    device: str = "auto"  # auto: this process's GPU when CUDA is present, else the CPU

    def validate(self) -> None:
        for key in ("epochs", "batch_size", "accumulate_steps"):
            check(getattr(self, key) >= 1, key, getattr(self, key), "must be >= 1")
        check(0 <= self.label_smoothing < 1, "label_smoothing", self.label_smoothing,
              "must be in [0, 1)")  # fmt: skip
        for key in ("l1", "l2", "bn_l1"):
            check(getattr(self, key) >= 0, key, getattr(self, key), "must be >= 0")
        for key in ("clip_grad_norm", "clip_grad_value"):
            value = getattr(self, key)
            check(value is None or value > 0, key, value, "must be positive")
        kind = self.device.split(":")[0]
        check(kind in ("auto", "cpu", "cuda", "mps"), "device", self.device,
              "must be auto, cpu, cuda, cuda:N or mps")  # fmt: skip


@dataclass
class FineTune(Config):
    """How a technique trains after it changes a model (pruning, surgery, factorisation, Deep
    Compression, QAT, codebooks) or trains a student: one config for all of them, AdamW."""

    epochs: int = 10
    lr: float = 1e-3
    schedule: Literal["constant", "cosine"] = "cosine"
    label_smoothing: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 64
    seed: int = 0  # the batch order (and a student's initialisation)

    def validate(self) -> None:
        check(self.epochs >= 0, "epochs", self.epochs, "must be >= 0")
        check(self.lr > 0, "lr", self.lr, "must be positive")
        check(0 <= self.label_smoothing < 1, "label_smoothing", self.label_smoothing,
              "must be in [0, 1)")  # fmt: skip
        check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        check(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")

    def train_config(self, **overrides: Any) -> TrainConfig:
        """The TrainConfig this fine-tuning runs with (quiet, no best-weights restoring)."""
        base: dict[str, Any] = {
            "epochs": self.epochs,  # 0 means "skip": callers check it; training needs >= 1
            "batch_size": self.batch_size,
            "progress": False,
            "restore_best": False,
            "optimizer": OptimizerConfig(name="adamw", lr=self.lr, weight_decay=self.weight_decay),
            "schedule": ScheduleConfig(name=self.schedule),
            "label_smoothing": self.label_smoothing,
        }
        return TrainConfig(**{**base, **overrides})
