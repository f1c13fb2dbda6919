"""Training: the Trainer (a loop, a step, callbacks), optimizers, schedules, precision,
checkpoints, the distributed runtime."""

from typing import TYPE_CHECKING

from dlforge._lazy import lazy_exports

if TYPE_CHECKING:
    from dlforge.train.callbacks import (
        BestWeights,
        Callback,
        EpochHook,
        EpochLog,
        FreezeBatchNorm,
        GradientMonitorCallback,
        ProgressBar,
        WeightPenalty,
    )
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
        FineTune,
        GradMonitorConfig,
        OptimizerConfig,
        ScheduleConfig,
        TrainConfig,
    )
    from dlforge.train.monitor import GradientMonitor
    from dlforge.train.optim import build_optimizer, param_groups, split_decay
    from dlforge.train.precision import (
        Precision,
        resolve_channels_last,
        resolve_precision,
    )
    from dlforge.train.runtime import Runtime
    from dlforge.train.schedule import LRSchedule, metric_mode
    from dlforge.train.seed import deterministic_mode, rng_state, seed_everything, set_rng_state
    from dlforge.train.step import ClassificationStep, Step, StepOutput
    from dlforge.train.trainer import History, NonFiniteLossError, Trainer

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "callbacks": [
            "BestWeights",
            "Callback",
            "EpochHook",
            "EpochLog",
            "FreezeBatchNorm",
            "GradientMonitorCallback",
            "ProgressBar",
            "WeightPenalty",
        ],
        "checkpoint": [
            "CheckpointError",
            "atomic_write",
            "atomic_write_json",
            "atomic_write_text",
            "load_train_state",
            "load_weights",
            "read_meta",
            "save_checkpoint",
            "save_train_state",
        ],
        "config": [
            "EarlyStoppingConfig",
            "FineTune",
            "GradMonitorConfig",
            "OptimizerConfig",
            "ScheduleConfig",
            "TrainConfig",
        ],
        "monitor": ["GradientMonitor"],
        "optim": ["build_optimizer", "param_groups", "split_decay"],
        "precision": ["Precision", "resolve_channels_last", "resolve_precision"],
        "runtime": ["Runtime"],
        "schedule": ["LRSchedule", "metric_mode"],
        "seed": ["deterministic_mode", "rng_state", "seed_everything", "set_rng_state"],
        "step": ["ClassificationStep", "Step", "StepOutput"],
        "trainer": ["History", "NonFiniteLossError", "Trainer"],
    },
)
