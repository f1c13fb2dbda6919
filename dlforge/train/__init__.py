"""Training: the Trainer loop, optimizers, schedules, precision, checkpoints, monitoring."""

from dlforge.train.checkpoint import (
    CheckpointError,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    load_train_state,
    load_weights,
    read_meta,
    save_checkpoint,
    save_train_state,
)
from dlforge.train.config import (
    EarlyStoppingConfig,
    GradMonitorConfig,
    OptimizerConfig,
    ScheduleConfig,
    TrainConfig,
)
from dlforge.train.monitor import GradientMonitor
from dlforge.train.optim import build_optimizer, l1_penalty, param_groups, split_decay
from dlforge.train.precision import Precision, pick_device, resolve_channels_last, resolve_precision
from dlforge.train.schedule import LRSchedule, metric_mode
from dlforge.train.seed import deterministic_mode, rng_state, seed_everything, set_rng_state
from dlforge.train.trainer import History, NonFiniteLossError, Trainer

__all__ = [
    "CheckpointError",
    "EarlyStoppingConfig",
    "GradMonitorConfig",
    "GradientMonitor",
    "History",
    "LRSchedule",
    "NonFiniteLossError",
    "OptimizerConfig",
    "Precision",
    "ScheduleConfig",
    "TrainConfig",
    "Trainer",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "build_optimizer",
    "deterministic_mode",
    "l1_penalty",
    "load_train_state",
    "load_weights",
    "metric_mode",
    "param_groups",
    "pick_device",
    "read_meta",
    "resolve_channels_last",
    "resolve_precision",
    "rng_state",
    "save_checkpoint",
    "save_train_state",
    "seed_everything",
    "set_rng_state",
    "split_decay",
]
