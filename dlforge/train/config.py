"""Configuration of a training run: optimizer, LR schedule, precision, stopping, monitoring."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dlforge.config import ConfigError


@dataclass
class OptimizerConfig:
    name: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9  # sgd
    nesterov: bool = False  # sgd
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam, adamw
    weight_decay: float = 0.0
    # Decaying biases and norm-layer scales shrinks what should not be shrunk; exempt by default.
    decay_bias_and_norm: bool = False

    def validate(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.nesterov and (self.name != "sgd" or self.momentum <= 0):
            raise ConfigError("nesterov needs name: sgd and momentum > 0")
        if len(self.betas) != 2:
            raise ConfigError(f"betas must have two values, got {self.betas}")


@dataclass
class ScheduleConfig:
    """LR schedule, applied per optimizer step; epochs in ``step_size``/``milestones``."""

    name: Literal["constant", "step", "multistep", "cosine", "onecycle", "plateau"] = "constant"
    warmup_steps: int = 0  # linear warm-up from lr/warmup_steps to lr, before the schedule
    step_size: int = 10  # step: epochs between decays
    milestones: list[int] = field(default_factory=list)  # multistep: epochs at which to decay
    gamma: float = 0.1  # step, multistep: decay factor
    min_lr: float = 0.0  # cosine floor
    pct_start: float = 0.3  # onecycle: share of steps spent rising
    div_factor: float = 25.0  # onecycle: start lr = lr / div_factor
    final_div_factor: float = 1e4  # onecycle: final lr = start lr / final_div_factor
    plateau_monitor: str = "val_loss"
    plateau_patience: int = 5  # plateau: epochs without improvement before a decay
    plateau_factor: float = 0.1
    plateau_threshold: float = 1e-4  # relative improvement that counts (as ReduceLROnPlateau)

    def validate(self) -> None:
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.name == "multistep" and not self.milestones:
            raise ConfigError("multistep schedule needs milestones (epochs)")
        if not 0 < self.pct_start < 1:
            raise ConfigError(f"pct_start must be in (0, 1), got {self.pct_start}")


@dataclass
class EarlyStoppingConfig:
    """The monitored metric picks the best checkpoint; ``patience`` (if set) stops the run."""

    monitor: str = "val_loss"
    mode: Literal["auto", "min", "max"] = "auto"  # auto: min for *loss*, max otherwise
    patience: int | None = None
    min_delta: float = 0.0


@dataclass
class GradMonitorConfig:
    every_n_steps: int = 10  # sample per-layer gradient norms this often (0 turns it off)
    vanishing_below: float = 1e-7
    exploding_above: float = 1e3


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 64
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    label_smoothing: float = 0.0
    l1: float = 0.0  # L1 penalty on weights (not biases or norm layers)
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

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.accumulate_steps < 1:
            raise ConfigError("epochs, batch_size and accumulate_steps must be >= 1")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        for key in ("clip_grad_norm", "clip_grad_value"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ConfigError(f"{key} must be positive, got {value}")
