"""The training loop: ``Trainer(model, TrainConfig(...)).fit(train_loader, val_loader)``.

It works on any ``nn.Module`` that maps a batch of inputs to class logits. What it adds to a
hand-written loop (tested to give the same weights when all of it is switched off): parameter
groups, LR schedules with warm-up, clipping, accumulation, mixed precision, channels_last, early
stopping with best/last checkpoints, exact resume, a gradient-health monitor and a guard against
NaN/inf losses.
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from dlforge.config import DlforgeError
from dlforge.train.checkpoint import (
    CheckpointError,
    load_state,
    load_train_state,
    load_weights,
    read_meta,
    remove_stray_temps,
    save_checkpoint,
    save_train_state,
)
from dlforge.train.config import TrainConfig
from dlforge.train.monitor import GradientMonitor
from dlforge.train.optim import build_optimizer, l1_penalty, split_decay
from dlforge.train.precision import pick_device, resolve_channels_last, resolve_precision
from dlforge.train.schedule import LRSchedule, metric_mode
from dlforge.train.seed import deterministic_mode, rng_state, set_rng_state

log = logging.getLogger("dlforge.train")
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class NonFiniteLossError(DlforgeError, RuntimeError):
    """The loss became NaN or inf; the run stopped and the last good checkpoint was kept."""


@dataclass
class History:
    epochs: list[dict[str, float]] = field(default_factory=list)
    steps: dict[str, list[float]] = field(default_factory=lambda: {"lr": [], "loss": []})
    grad_norms: list[dict[str, float]] = field(default_factory=list)
    grad_flags: list[dict[str, list[str]]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        return cls(**data)


class Trainer:
    """Trains ``model`` with ``config``; checkpoints go to ``out_dir``/checkpoints if given."""

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig | None = None,
        *,
        loss_fn: LossFn | None = None,
        class_weights: torch.Tensor | None = None,
        out_dir: str | Path | None = None,
        meta: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        on_train_epoch_start: Callable[[int, nn.Module], None] | None = None,
    ) -> None:
        self.config = cfg = config or TrainConfig()
        self.device = torch.device(device) if device is not None else pick_device()
        self.model = model.to(self.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.channels_last = resolve_channels_last(cfg.channels_last, model)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        weight = class_weights.to(self.device) if class_weights is not None else None
        self.loss_fn: LossFn = loss_fn or nn.CrossEntropyLoss(
            weight=weight, label_smoothing=cfg.label_smoothing
        )
        self.optimizer = build_optimizer(model, cfg.optimizer)
        self.scaler = self.precision.scaler()
        self.monitor = GradientMonitor(model, cfg.grad_monitor)
        self.l1_params = split_decay(model)[0] if cfg.l1 > 0 else []
        self.bn_scales = (
            [
                m.weight
                for m in model.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None
            ]
            if cfg.bn_l1 > 0
            else []
        )
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.meta = dict(meta or {})
        self.history = History()
        # Called after model.train() at each epoch with the 0-based epoch (e.g. to freeze BN).
        # A hook that changes the model as it trains (gradual pruning) may define
        # ``best_eligible(epoch) -> bool``: epochs it returns False for are neither kept as the
        # best weights nor counted by early stopping, so restoring the best never brings back
        # a model from before the change was complete.
        self.on_train_epoch_start = on_train_epoch_start
        self.schedule: LRSchedule | None = None
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps taken
        self._best_value: float | None = None
        self._best_state: dict[str, torch.Tensor] | None = None
        self._bad_epochs = 0
        self.steps_this_fit = 0  # optimizer steps taken by the last fit() (0: a finished run)

    # -- paths ---------------------------------------------------------------------------------
    def checkpoint_path(self, name: str) -> Path | None:
        return self.out_dir / "checkpoints" / f"{name}.safetensors" if self.out_dir else None

    # -- public API ---------------------------------------------------------------------------
    def fit(
        self,
        train_loader: DataLoader,
        val_loader: DataLoader | None = None,
        resume: str | Path | None = None,
    ) -> History:
        with deterministic_mode(self.config.deterministic):
            return self._fit(train_loader, val_loader, resume)

    def _fit(
        self, train_loader: DataLoader, val_loader: DataLoader | None, resume: str | Path | None
    ) -> History:
        cfg = self.config
        steps_per_epoch = math.ceil(len(train_loader) / cfg.accumulate_steps)
        self.schedule = LRSchedule(
            self.optimizer, cfg.schedule, steps_per_epoch, steps_per_epoch * cfg.epochs
        )
        monitor_name = self._monitor_name(val_loader is not None)
        self.history.settings = {
            "device": str(self.device),
            "precision": self.precision.name,
            "channels_last": self.channels_last,
            "monitor": monitor_name,
            "threads": torch.get_num_threads(),
        }
        if self.out_dir is not None:
            for p in remove_stray_temps(self.out_dir / "checkpoints"):
                log.info("removed %s, left by an interrupted write", p)
        if resume is not None:
            self._restore(Path(resume), train_loader.generator)
        first_step = self.step
        log.info(
            "training on %s, precision %s, channels_last %s",
            self.device,
            self.precision.name,
            self.channels_last,
        )
        while self.epoch < cfg.epochs:
            metrics = self._train_epoch(train_loader)
            if val_loader is not None:
                metrics.update({f"val_{k}": v for k, v in self.evaluate_loss(val_loader).items()})
            self.epoch += 1
            metrics["epoch"] = self.epoch
            self._end_epoch(metrics, monitor_name, train_loader.generator)
            if (
                cfg.early_stopping.patience is not None
                and self._bad_epochs > cfg.early_stopping.patience
            ):
                self.history.events.append(
                    f"early stop after epoch {self.epoch}: {monitor_name} did not improve "
                    f"for {self._bad_epochs} epochs"
                )
                log.info(self.history.events[-1])
                break
        self.steps_this_fit = self.step - first_step
        if cfg.restore_best and self._best_state is not None:
            self.model.load_state_dict(self._best_state)
        return self.history

    @torch.no_grad()
    def evaluate_loss(self, loader: DataLoader) -> dict[str, float]:
        """Mean loss and accuracy over ``loader`` in eval mode."""
        was_training = self.model.training
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        n = 0
        for x, y in loader:
            x, y = self._to_device(x, y)
            with self.precision.autocast():
                out = self.model(x)
            loss_sum += self.loss_fn(out.float(), y) * len(y)
            correct += (out.argmax(1) == y).sum()
            n += len(y)
        self.model.train(was_training)
        return {"loss": loss_sum.item() / max(n, 1), "accuracy": correct.item() / max(n, 1)}

    # -- one epoch -------------------------------------------------------------------------------
    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def _train_epoch(self, loader: DataLoader) -> dict[str, float]:
        cfg, model = self.config, self.model
        model.train()
        if self.on_train_epoch_start is not None:
            self.on_train_epoch_start(self.epoch, model)
        accumulate = cfg.accumulate_steps
        n_batches = len(loader)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = skipped = 0
        step_losses: list[torch.Tensor] = []
        # The bar is updated by hand: wrapping the loader in tqdm changes the order in which the
        # loader's generator is drawn from, which would break parity with a plain loop.
        bar = tqdm(
            total=n_batches,
            desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
            leave=False,
            disable=not self._show_progress(),
            dynamic_ncols=True,
        )
        start = time.perf_counter()
        for i, (x_cpu, y_cpu) in enumerate(loader):
            bar.update(1)
            x, y = self._to_device(x_cpu, y_cpu)
            with self.precision.autocast():
                out = model(x)
            loss = self.loss_fn(out.float(), y)  # the loss itself in fp32
            if self.l1_params:
                loss = loss + cfg.l1 * l1_penalty(self.l1_params)
            if self.bn_scales:
                loss = loss + cfg.bn_l1 * l1_penalty(self.bn_scales)
            if not torch.isfinite(loss):
                skipped += 1
                self._on_nonfinite(loss, i)
                continue
            self.scaler.scale(loss / accumulate if accumulate > 1 else loss).backward()
            if (i + 1) % accumulate == 0 or i + 1 == n_batches:
                self._optimizer_step()
            loss_d = loss.detach()
            step_losses.append(loss_d)
            loss_sum += loss_d * len(y)
            correct += (out.detach().argmax(1) == y).sum()
            seen += len(y)
            if i % 10 == 0 and not bar.disable:
                elapsed = time.perf_counter() - start
                bar.set_postfix(
                    loss=f"{loss_d.item():.4f}",
                    acc=f"{correct.item() / max(seen, 1):.3f}",
                    lr=f"{self.optimizer.param_groups[0]['lr']:.2e}",
                    sps=f"{seen / max(elapsed, 1e-9):.0f}",
                )
        elapsed = time.perf_counter() - start
        bar.close()
        self.history.steps["loss"].extend(torch.stack(step_losses).tolist() if step_losses else [])
        if seen == 0:
            raise NonFiniteLossError(
                f"every batch of epoch {self.epoch + 1} had a non-finite loss; stopping"
            )
        metrics = {
            "train_loss": loss_sum.item() / seen,
            "train_accuracy": correct.item() / seen,
            "lr": self.optimizer.param_groups[0]["lr"],
            "samples_per_s": seen / elapsed,
            "epoch_time_s": elapsed,
        }
        if skipped:
            metrics["skipped_batches"] = skipped
        return metrics

    def _optimizer_step(self) -> None:
        cfg = self.config
        self.scaler.unscale_(self.optimizer)  # clip and monitor true gradients, not scaled ones
        if self.monitor.should_sample(self.step):
            self.monitor.sample()
        if cfg.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.clip_grad_norm)
        if cfg.clip_grad_value is not None:
            torch.nn.utils.clip_grad_value_(self.params, cfg.clip_grad_value)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.history.steps["lr"].append(self.optimizer.param_groups[0]["lr"])
        assert self.schedule is not None
        self.schedule.step()
        self.step += 1

    def _on_nonfinite(self, loss: torch.Tensor, batch: int) -> None:
        where = f"epoch {self.epoch + 1}, batch {batch + 1} (optimizer step {self.step})"
        if self.config.on_nonfinite == "stop":
            last = self.checkpoint_path("last")
            kept = f"; last good checkpoint kept: {last}" if last and last.exists() else ""
            message = f"loss became {loss.item()} at {where}; stopping the run{kept}"
            self.history.events.append(message)
            raise NonFiniteLossError(message)
        self.optimizer.zero_grad(set_to_none=True)  # drop the partial accumulation too
        self.history.events.append(f"skipped a step: loss {loss.item()} at {where}")
        log.warning(self.history.events[-1])

    # -- end of epoch: monitor, best/last checkpoints, early stopping -------------------------
    def _monitor_name(self, has_val: bool) -> str:
        name = self.config.early_stopping.monitor
        if not has_val and name.startswith("val_"):
            fallback = "train_" + name[4:]
            log.info("no validation data: monitoring %s instead of %s", fallback, name)
            return fallback
        return name

    def _end_epoch(
        self, metrics: dict[str, float], monitor_name: str, generator: torch.Generator | None
    ) -> None:
        grads = self.monitor.epoch_summary()
        self.history.grad_norms.append(grads["norms"])
        self.history.grad_flags.append({k: grads[k] for k in ("vanishing", "exploding")})
        for kind in ("vanishing", "exploding"):
            if grads[kind]:
                log.warning("epoch %d: %s gradients in %s", self.epoch, kind, grads[kind])
        assert self.schedule is not None
        self.schedule.epoch_end(metrics)
        if monitor_name not in metrics:
            raise KeyError(
                f"early_stopping.monitor '{monitor_name}' is not an epoch metric; "
                f"choose one of {sorted(metrics)}"
            )
        eligible = self._best_eligible()
        improved = eligible and self._is_improvement(metrics[monitor_name])
        if improved:
            self._best_value, self._bad_epochs = metrics[monitor_name], 0
            self._best_state = copy.deepcopy(self.model.state_dict())
            self.history.best = {
                "epoch": self.epoch,
                "step": self.step,
                monitor_name: metrics[monitor_name],
            }
        elif eligible:
            self._bad_epochs += 1
        self.history.epochs.append(metrics)
        log.info(
            "epoch %d/%d %s",
            self.epoch,
            self.config.epochs,
            " ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "epoch"),
        )
        if self.out_dir is not None:
            self._save(metrics, improved, generator)

    def _best_eligible(self) -> bool:
        hook = self.on_train_epoch_start
        check = getattr(hook, "best_eligible", None)
        return bool(check(self.epoch - 1)) if callable(check) else True

    def _is_improvement(self, value: float) -> bool:
        es = self.config.early_stopping
        mode = metric_mode(es.monitor) if es.mode == "auto" else es.mode
        if self._best_value is None:
            return True
        if mode == "min":
            return value < self._best_value - es.min_delta
        return value > self._best_value + es.min_delta

    def _checkpoint_meta(self, metrics: dict[str, float]) -> dict[str, Any]:
        return {**self.meta, "epoch": self.epoch, "step": self.step, "metrics": metrics}

    def _save(
        self, metrics: dict[str, float], improved: bool, generator: torch.Generator | None
    ) -> None:
        """End-of-epoch files, in an order that a kill at any instant cannot break.

        The training state (weights included) is written first and alone decides a resume;
        ``best`` and ``last`` follow. A kill after the state but before them leaves files one
        epoch behind, which ``_restore`` rewrites from the state.
        """
        assert self.schedule is not None
        weights = {k: v.detach() for k, v in self.model.state_dict().items()}
        state = {
            "epoch": self.epoch,
            "step": self.step,
            "model": weights,
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(generator),
            "history": self.history.to_dict(),
            "best_value": self._best_value,
            "bad_epochs": self._bad_epochs,
        }
        last = self.checkpoint_path("last")
        best = self.checkpoint_path("best")
        assert last is not None and best is not None
        save_train_state(state_path(last), state)
        meta = self._checkpoint_meta(metrics)
        if improved:
            save_checkpoint(best, self.model, meta)
        save_checkpoint(last, self.model, meta)

    def _restore(self, path: Path, generator: torch.Generator | None) -> None:
        """Continue from a training state; bring ``best``/``last`` up to it if a kill left them
        behind."""
        spath = state_path(path)
        if not spath.exists():
            raise CheckpointError(f"cannot resume: no training state {spath}")
        state = load_train_state(spath)
        try:
            load_state(self.model, state["model"], str(spath))
            self.optimizer.load_state_dict(state["optimizer"])
            assert self.schedule is not None
            self.schedule.load_state_dict(state["schedule"])
            self.scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"], generator)
            self.epoch, self.step = int(state["epoch"]), int(state["step"])
            self.history = History.from_dict(state["history"])
            self._best_value, self._bad_epochs = state["best_value"], int(state["bad_epochs"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"cannot resume from {spath}: {exc!r}") from None
        self._restore_best(spath)
        if self.out_dir is not None and self.history.epochs:
            meta = self._checkpoint_meta(self.history.epochs[-1])
            last = self.checkpoint_path("last")
            assert last is not None
            if _step_of(last) != self.step:
                save_checkpoint(last, self.model, meta)
        self.history.events.append(f"resumed from {spath} at epoch {self.epoch}, step {self.step}")
        log.info(self.history.events[-1])

    def _restore_best(self, spath: Path) -> None:
        best_step = self.history.best.get("step")
        if best_step is None:
            return
        best = (
            self.checkpoint_path("best")
            if self.out_dir is not None
            else spath.with_name("best.safetensors")
        )
        assert best is not None
        if best_step == self.step:  # the best is the state's own weights
            self._best_state = copy.deepcopy(self.model.state_dict())
            if self.out_dir is not None and _step_of(best) != self.step:
                save_checkpoint(best, self.model, self._checkpoint_meta(self.history.epochs[-1]))
            return
        if _step_of(best) != best_step:
            log.warning(
                "best checkpoint %s is not the one from step %s: not restored", best, best_step
            )
            return
        best_model = copy.deepcopy(self.model)
        self._best_state = load_weights(best, best_model).state_dict()

    def _show_progress(self) -> bool:
        mode = self.config.progress
        return mode is True or (mode == "auto" and sys.stderr.isatty())


def state_path(checkpoint: Path) -> Path:
    """``last.safetensors`` -> ``last.state.safetensors`` (a state path is returned as is)."""
    if checkpoint.name.endswith(".state.safetensors"):
        return checkpoint
    return checkpoint.with_suffix(".state.safetensors")


def _step_of(path: Path) -> int | None:
    """The optimizer step a checkpoint was written at, or None when it is missing or unreadable."""
    try:
        step = read_meta(path).get("step")
    except CheckpointError:
        return None
    return step if isinstance(step, int) else None
