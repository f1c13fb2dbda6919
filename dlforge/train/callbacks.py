"""Callbacks: everything the training loop does besides stepping, as small objects.

The events, in the order the loop calls them::

    on_fit_start
    per epoch:  on_train_epoch_start
                per batch:  on_train_batch_start, on_before_backward (may add to the loss),
                            on_after_backward, on_before_optimizer_step (gradients unscaled),
                            on_train_batch_end
                on_validation_end (metrics so far), on_train_epoch_end (the epoch's metrics)
    on_fit_end
    on_restore (before a resume loads the saved weights: the callback may reshape the model)

A callback that keeps state returns it from ``state_dict``; the Trainer puts it into every
checkpoint under ``state_key`` and gives it back on resume. The Trainer's own features are
callbacks too (gradient monitor, weight penalties, best weights and early stopping, epoch log,
progress bar), so a new capability (gradual pruning, QAT's batch-norm freezing, loggers, Optuna
pruning) plugs in the same way without touching the loop.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dlforge.config import ConfigError
from dlforge.report.tables import fmt, label
from dlforge.train.config import EarlyStoppingConfig, GradMonitorConfig
from dlforge.train.monitor import GradientMonitor
from dlforge.train.schedule import metric_mode

if TYPE_CHECKING:
    from dlforge.train.step import StepOutput
    from dlforge.train.trainer import Trainer

log = logging.getLogger("dlforge.train")

BATCH_EVENTS = (
    "on_train_batch_start",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_train_batch_end",
)


class Callback:
    """The base: every event is a no-op, so a callback overrides only what it needs."""

    @property
    def state_key(self) -> str:
        return type(self).__name__

    def on_fit_start(self, trainer: Trainer) -> None: ...
    def on_fit_end(self, trainer: Trainer) -> None: ...
    def on_train_epoch_start(self, trainer: Trainer) -> None: ...
    def on_train_batch_start(self, trainer: Trainer, batch: Any, index: int) -> None: ...
    def on_before_backward(self, trainer: Trainer, out: StepOutput) -> None: ...
    def on_after_backward(self, trainer: Trainer) -> None: ...
    def on_before_optimizer_step(self, trainer: Trainer) -> None: ...
    def on_train_batch_end(self, trainer: Trainer, out: StepOutput, index: int) -> None: ...
    def on_validation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None: ...
    def on_train_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None: ...
    def on_restore(self, trainer: Trainer, model_state: dict[str, torch.Tensor]) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


def overrides(callback: Callback, event: str) -> bool:
    """Whether ``callback`` does something on ``event`` (the loop skips the no-ops)."""
    return getattr(type(callback), event) is not getattr(Callback, event)


class GradientMonitorCallback(Callback):
    """Per-layer gradient norms sampled every N optimizer steps; flags per epoch."""

    def __init__(self, model: nn.Module, cfg: GradMonitorConfig) -> None:
        self.monitor = GradientMonitor(model, cfg)

    def on_before_optimizer_step(self, trainer: Trainer) -> None:
        if self.monitor.should_sample(trainer.step):
            self.monitor.sample()

    def on_train_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        grads = self.monitor.epoch_summary()
        trainer.history.grad_norms.append(grads["norms"])
        trainer.history.grad_flags.append({k: grads[k] for k in ("vanishing", "exploding")})
        for kind in ("vanishing", "exploding"):
            if grads[kind] and trainer.runtime.is_main:
                log.warning("epoch %d: %s gradients in %s", trainer.epoch, kind, grads[kind])


class WeightPenalty(Callback):
    """``coefficient * sum(|w|)`` (L1) or ``coefficient/2 * sum(w^2)`` (L2) added to the loss.

    The L2 penalty is the textbook one: under SGD it equals weight decay, under Adam it does not
    (Adam rescales its gradient; AdamW's decoupled decay is not rescaled), which is why both
    exist. L1 on batch-norm scales is network slimming (Liu et al., 2017).
    """

    def __init__(self, params: list[nn.Parameter], coefficient: float, kind: str = "l1") -> None:
        if kind not in ("l1", "l2"):
            raise ValueError(f"penalty kind must be l1 or l2, got {kind!r}")
        self.params, self.coefficient, self.kind = params, coefficient, kind

    @property
    def state_key(self) -> str:
        return f"WeightPenalty:{self.kind}:{len(self.params)}"

    def penalty(self) -> torch.Tensor:
        if self.kind == "l1":
            return torch.stack([p.abs().sum() for p in self.params]).sum()
        return 0.5 * torch.stack([p.pow(2).sum() for p in self.params]).sum()

    def on_before_backward(self, trainer: Trainer, out: StepOutput) -> None:
        out.loss = out.loss + self.coefficient * self.penalty()


class BestWeights(Callback):
    """Keeps the best weights by the monitored metric; stops the run after ``patience`` epochs
    without improvement; restores the best at the end when ``restore``.

    Epochs a callback marks ineligible (``trainer.best_eligible = False``, e.g. while gradual
    pruning still raises sparsity) are neither kept as best nor counted by early stopping.
    """

    def __init__(self, cfg: EarlyStoppingConfig, monitor: str, restore: bool) -> None:
        self.cfg, self.monitor, self.restore = cfg, monitor, restore
        self.mode = metric_mode(cfg.monitor) if cfg.mode == "auto" else cfg.mode
        self.best_value: float | None = None
        self.bad_epochs = 0
        self.stopped = False  # early-stopped: a resume must not train on
        self.best_state: dict[str, torch.Tensor] | None = None

    def _improves(self, value: float) -> bool:
        if self.best_value is None:
            return True
        if self.mode == "min":
            return value < self.best_value - self.cfg.min_delta
        return value > self.best_value + self.cfg.min_delta

    def on_train_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if self.monitor not in metrics:
            raise ConfigError(
                f"{self.monitor!r} is not an epoch metric; choose one of {sorted(metrics)}",
                "train.early_stopping.monitor",
            )
        trainer.improved = trainer.best_eligible and self._improves(metrics[self.monitor])
        if trainer.improved:
            self.best_value, self.bad_epochs = metrics[self.monitor], 0
            self.best_state = copy.deepcopy(trainer.model.state_dict())
            trainer.history.best = {
                "epoch": trainer.epoch,
                "step": trainer.step,
                self.monitor: metrics[self.monitor],
            }
        elif trainer.best_eligible:
            self.bad_epochs += 1
        patience = self.cfg.patience
        if patience is not None and self.bad_epochs > patience:
            trainer.should_stop = self.stopped = True
            trainer.history.events.append(
                f"early stop after epoch {trainer.epoch}: {self.monitor} did not improve "
                f"for {self.bad_epochs} epochs"
            )
            log.info(trainer.history.events[-1])

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.restore and self.best_state is not None:
            trainer.model.load_state_dict(self.best_state)

    def state_dict(self) -> dict[str, Any]:
        return {"best_value": self.best_value, "bad_epochs": self.bad_epochs,
                "stopped": self.stopped}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_value, self.bad_epochs = state["best_value"], int(state["bad_epochs"])
        self.stopped = bool(state.get("stopped", False))


class EpochLog(Callback):
    """One log line per epoch: INFO (the CLI shows it; from Python ``dlforge.log_to_stderr()``),
    DEBUG for quiet runs (``progress=False``: the fine-tuning inside a compression stage)."""

    def on_train_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        quiet = trainer.config.progress is False or not trainer.runtime.is_main
        log.log(
            logging.DEBUG if quiet else logging.INFO,
            "epoch %d/%d %s",
            trainer.epoch,
            trainer.config.epochs,
            "  ".join(f"{label(k)} {fmt(v)}" for k, v in metrics.items() if k != "epoch"),
        )


class ProgressBar(Callback):
    """A tqdm bar per epoch (a notebook widget in Jupyter) with loss, rate and samples/s.

    It is updated by hand from the batch events: wrapping the loader in tqdm would change the
    order in which the loader's generator is drawn from, and so the batches."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.start = 0.0
        self.seen = 0

    def on_train_epoch_start(self, trainer: Trainer) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=trainer.batches_per_epoch, leave=False, dynamic_ncols=True,
                        desc=f"epoch {trainer.epoch + 1}/{trainer.config.epochs}")  # fmt: skip
        self.start, self.seen = time.perf_counter(), 0

    def on_train_batch_end(self, trainer: Trainer, out: StepOutput, index: int) -> None:
        self.bar.update(1)
        self.seen += out.size
        if index % 10 == 0:
            elapsed = max(time.perf_counter() - self.start, 1e-9)
            self.bar.set_postfix(
                loss=f"{out.loss.item():.4f}",
                lr=f"{trainer.optimizer.param_groups[0]['lr']:.2e}",
                sps=f"{self.seen / elapsed:.0f}",
            )

    def on_train_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class FreezeBatchNorm(Callback):
    """From ``epoch`` (0-based) on, batch-norm layers use and keep their running statistics
    (QAT: the statistics settle before the quantization ranges are learned)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: Trainer) -> None:
        if trainer.epoch >= self.epoch:
            for m in trainer.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()


class EpochHook(Callback):
    """Adapts a plain ``fn(epoch, model)`` called at the start of each training epoch."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    @property
    def state_key(self) -> str:
        return f"EpochHook:{getattr(self.fn, '__name__', type(self.fn).__name__)}"

    def on_train_epoch_start(self, trainer: Trainer) -> None:
        self.fn(trainer.epoch, trainer.model)
