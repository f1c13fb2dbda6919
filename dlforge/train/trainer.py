"""The training loop: ``Trainer(model, TrainConfig(...)).fit(train_loader, val_loader)``.

A loop, a step and callbacks. The loop moves batches to the device, runs the step (what a batch
means: ``ClassificationStep`` by default), backward with accumulation and mixed precision,
clipping and the optimizer with its LR schedule, a NaN guard, and the crash-safe checkpoints at
the end of each epoch (after every callback has updated the state they save). Everything else
is a callback (``train/callbacks.py``): the gradient monitor, weight penalties, best weights and
early stopping, the epoch log and the progress bar, next to the user's own (gradual pruning,
QAT's batch-norm freezing, ...). With all of it switched off, the weights equal a hand-written
loop's bit for bit (tests/test_trainer.py).

Under ``torchrun`` the same loop runs data-parallel (``train/runtime.py``): the model is wrapped
in DDP, each process reads its shard, metrics are summed over processes, and only the first
process writes files.
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from dlforge.config import DlforgeError
from dlforge.train.callbacks import (
    BATCH_EVENTS,
    BestWeights,
    Callback,
    EpochHook,
    EpochLog,
    GradientMonitorCallback,
    ProgressBar,
    WeightPenalty,
    overrides,
)
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
from dlforge.train.optim import build_optimizer, split_decay
from dlforge.train.precision import resolve_channels_last, resolve_precision
from dlforge.train.runtime import Runtime
from dlforge.train.schedule import LRSchedule
from dlforge.train.seed import deterministic_mode, rng_state, set_rng_state
from dlforge.train.step import ClassificationStep, Step, StepOutput

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
    """Trains ``model`` with ``config``; checkpoints go to ``out_dir``/checkpoints if given.

    ``step`` defines the objective (default: classification with ``loss_fn`` or cross-entropy);
    ``callbacks`` add behaviour at the loop's events. ``on_train_epoch_start`` takes a plain
    ``fn(epoch, model)`` (or a Callback) for the common case of a per-epoch change.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig | None = None,
        *,
        step: Step | None = None,
        callbacks: Iterable[Callback] = (),
        loss_fn: LossFn | None = None,
        class_weights: torch.Tensor | None = None,
        out_dir: str | Path | None = None,
        meta: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        runtime: Runtime | None = None,
        on_train_epoch_start: Callable[[int, nn.Module], None] | Callback | None = None,
    ) -> None:
        self.config = cfg = config or TrainConfig()
        self.runtime = runtime or Runtime.from_env(device or cfg.device)
        self.device = self.runtime.device
        self.model = model.to(self.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.channels_last = resolve_channels_last(cfg.channels_last, model)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.step_fn = step or ClassificationStep(loss_fn, cfg.label_smoothing, class_weights)
        self.optimizer = build_optimizer(model, cfg.optimizer)
        self.scaler = self.precision.scaler()
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.forward_model = self.runtime.wrap(self.model)  # DDP under torchrun
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.meta = dict(meta or {})
        self.notes: dict[str, Any] = {}  # what was done after fitting (decoupled head, decision)
        self.history = History()
        self.schedule: LRSchedule | None = None
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps taken
        self.steps_this_fit = 0  # optimizer steps taken by the last fit() (0: a finished run)
        self.batches_per_epoch = 0
        # Per-epoch flags the callbacks set: whether this epoch may be kept as the best (gradual
        # pruning clears it until its final sparsity), whether it was, and whether to stop.
        self.best_eligible = True
        self.improved = False
        self.should_stop = False
        user = list(callbacks)
        if on_train_epoch_start is not None:
            user.append(
                on_train_epoch_start
                if isinstance(on_train_epoch_start, Callback)
                else EpochHook(on_train_epoch_start)
            )
        self.callbacks = self._builtin_callbacks(user)
        self._batch_callbacks = {
            e: [c for c in self.callbacks if overrides(c, e)] for e in BATCH_EVENTS
        }

    def _builtin_callbacks(self, user: list[Callback]) -> list[Callback]:
        """The loop's own features around the user's callbacks: the monitor first, then the
        user's, the penalties, best weights / early stopping, and the log and bar last."""
        cfg, model = self.config, self.model
        out: list[Callback] = [GradientMonitorCallback(model, cfg.grad_monitor), *user]
        if cfg.l1 > 0:
            out.append(WeightPenalty(split_decay(model)[0], cfg.l1, "l1"))
        if cfg.l2 > 0:
            out.append(WeightPenalty(split_decay(model)[0], cfg.l2, "l2"))
        if cfg.bn_l1 > 0:
            scales = [
                m.weight
                for m in model.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None
            ]
            out.append(WeightPenalty(scales, cfg.bn_l1, "l1"))
        self.best = BestWeights(cfg.early_stopping, cfg.early_stopping.monitor, cfg.restore_best)
        tail: list[Callback] = [self.best, EpochLog()]
        if self._show_progress():
            tail.append(ProgressBar())
        return [*out, *tail]

    # -- paths ---------------------------------------------------------------------------------
    def checkpoint_path(self, name: str) -> Path | None:
        return self.out_dir / "checkpoints" / f"{name}.safetensors" if self.out_dir else None

    @property
    def writes_files(self) -> bool:
        return self.out_dir is not None and self.runtime.is_main

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
        self.batches_per_epoch = len(train_loader)
        steps_per_epoch = math.ceil(len(train_loader) / cfg.accumulate_steps)
        self.schedule = LRSchedule(
            self.optimizer, cfg.schedule, steps_per_epoch, steps_per_epoch * cfg.epochs
        )
        self.best.monitor = self._monitor_name(val_loader is not None)
        self.history.settings = {
            "device": str(self.device),
            "precision": self.precision.name,
            "channels_last": self.channels_last,
            "monitor": self.best.monitor,
            "threads": torch.get_num_threads(),
            "processes": self.runtime.world_size,
        }
        describe = getattr(self.step_fn, "describe", None)  # a duck-typed step may lack it
        if describe is not None:
            self.history.settings.update(describe(val_loader is not None))
        if self.writes_files:
            assert self.out_dir is not None
            for p in remove_stray_temps(self.out_dir / "checkpoints"):
                log.info("removed %s, left by an interrupted write", p)
        if resume is not None:
            self._restore(Path(resume), train_loader.generator)
        first_step = self.step
        log.log(
            logging.INFO
            if self.config.progress is not False and self.runtime.is_main
            else logging.DEBUG,
            "training on %s%s, precision %s, channels_last %s",
            self.device,
            f" x {self.runtime.world_size} processes" if self.runtime.world_size > 1 else "",
            self.precision.name,
            self.channels_last,
        )
        self._emit("on_fit_start")
        while self.epoch < cfg.epochs and not self.should_stop:
            self._set_sampler_epoch(train_loader)
            self.best_eligible, self.improved = True, False
            self.model.train()
            self._emit("on_train_epoch_start")
            metrics = self._train_epoch(train_loader)
            if val_loader is not None:
                metrics.update({f"val_{k}": v for k, v in self.evaluate_loss(val_loader).items()})
                self._emit("on_validation_end", metrics)
            self.epoch += 1
            metrics["epoch"] = self.epoch
            self.schedule.epoch_end(metrics)
            self._emit("on_train_epoch_end", metrics)
            self.history.epochs.append(metrics)
            if self.out_dir is not None:
                self._save(metrics, train_loader.generator)
        self.steps_this_fit = self.step - first_step
        self._emit("on_fit_end")
        return self.history

    def _emit(self, event: str, *args: Any) -> None:
        for c in self.callbacks:
            getattr(c, event)(self, *args)

    def _set_sampler_epoch(self, loader: DataLoader) -> None:
        set_epoch = getattr(loader.sampler, "set_epoch", None)
        if callable(set_epoch):  # DistributedSampler: a new shuffle each epoch
            set_epoch(self.epoch)

    def to_device(self, obj: Any) -> Any:
        """Tensors (nested in tuples, lists, dicts) to the device; 4-D inputs in channels_last."""
        if isinstance(obj, torch.Tensor):
            obj = obj.to(self.device, non_blocking=True)
            if self.channels_last and obj.dim() == 4 and obj.is_floating_point():
                obj = obj.contiguous(memory_format=torch.channels_last)
            return obj
        if isinstance(obj, dict):
            return {k: self.to_device(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return type(obj)(self.to_device(v) for v in obj)
        return obj

    @torch.no_grad()
    def evaluate_loss(self, loader: DataLoader) -> dict[str, float]:
        """Mean loss and accuracy over ``loader`` in eval mode (summed over processes)."""
        was_training = self.model.training
        self.model.eval()
        totals = torch.zeros(3, device=self.device, dtype=torch.float64)  # loss, correct, n
        for batch in loader:
            out = self.step_fn(self.model, batch, self)
            totals[0] += out.loss.detach().double() * out.size
            totals[1] += _correct(out)
            totals[2] += out.size
        self.model.train(was_training)
        if isinstance(loader.sampler, DistributedSampler):  # each process saw its shard
            totals = self.runtime.sum(totals)
        loss_sum, correct, n = totals.tolist()
        return {"loss": loss_sum / max(n, 1), "accuracy": correct / max(n, 1)}

    # -- one epoch -------------------------------------------------------------------------------
    def _train_epoch(self, loader: DataLoader) -> dict[str, float]:
        cfg = self.config
        accumulate = cfg.accumulate_steps
        n_batches = len(loader)
        totals = torch.zeros(3, device=self.device, dtype=torch.float64)  # loss, correct, n
        skipped = 0
        step_losses: list[torch.Tensor] = []
        events = self._batch_callbacks
        start = time.perf_counter()
        for i, batch in enumerate(loader):
            for c in events["on_train_batch_start"]:
                c.on_train_batch_start(self, batch, i)
            out = self.step_fn(self.forward_model, batch, self)
            for c in events["on_before_backward"]:
                c.on_before_backward(self, out)
            if not self._finite(out.loss):
                skipped += 1
                self._on_nonfinite(out.loss, i)
                continue
            loss = out.loss
            self.scaler.scale(loss / accumulate if accumulate > 1 else loss).backward()
            for c in events["on_after_backward"]:
                c.on_after_backward(self)
            if (i + 1) % accumulate == 0 or i + 1 == n_batches:
                self._optimizer_step()
            loss_d = loss.detach()
            step_losses.append(loss_d)
            totals[0] += loss_d.double() * out.size
            totals[1] += _correct(out)
            totals[2] += out.size
            for c in events["on_train_batch_end"]:
                c.on_train_batch_end(self, out, i)
        elapsed = time.perf_counter() - start
        self.history.steps["loss"].extend(torch.stack(step_losses).tolist() if step_losses else [])
        loss_sum, correct, seen = self.runtime.sum(totals).tolist()
        if seen == 0:
            raise NonFiniteLossError(
                f"every batch of epoch {self.epoch + 1} had a non-finite loss; stopping"
            )
        metrics = {
            "train_loss": loss_sum / seen,
            "train_accuracy": correct / seen,
            "lr": self.optimizer.param_groups[0]["lr"],
            "samples_per_s": seen / elapsed,
            "epoch_time_s": elapsed,
        }
        if skipped:
            metrics["skipped_batches"] = skipped
        return metrics

    def _finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite, on every process: a process that skipped a batch alone
        would miss the gradient all-reduce and hang the others."""
        ok = torch.isfinite(loss.detach()).to(torch.float64)
        if self.runtime.distributed:
            ok = self.runtime.sum(ok.reshape(1)) == self.runtime.world_size
        return bool(ok.all())

    def _optimizer_step(self) -> None:
        cfg = self.config
        self.scaler.unscale_(self.optimizer)  # clip and monitor true gradients, not scaled ones
        for c in self._batch_callbacks["on_before_optimizer_step"]:
            c.on_before_optimizer_step(self)
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

    def _monitor_name(self, has_val: bool) -> str:
        name = self.config.early_stopping.monitor
        if not has_val and name.startswith("val_"):
            fallback = "train_" + name[4:]
            log.debug("no validation data: monitoring %s instead of %s", fallback, name)
            return fallback
        return name

    # -- checkpoints -----------------------------------------------------------------------------
    def _checkpoint_meta(self, metrics: dict[str, float]) -> dict[str, Any]:
        return {**self.meta, "epoch": self.epoch, "step": self.step, "metrics": metrics}

    def training_state(self, generator: torch.Generator | None) -> dict[str, Any]:
        """Everything an exact resume needs: weights, optimizer, schedule, scaler, RNG (every
        process's), history, and the step's and every callback's state."""
        assert self.schedule is not None
        return {
            "epoch": self.epoch,
            "step": self.step,
            "model": {k: v.detach() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": self.runtime.gather(rng_state(generator)),
            "history": self.history.to_dict(),
            "step_fn": self.step_fn.state_dict(),
            "callbacks": {c.state_key: c.state_dict() for c in self.callbacks},
        }

    def _save(self, metrics: dict[str, float], generator: torch.Generator | None) -> None:
        """End-of-epoch files, in an order that a kill at any instant cannot break.

        The training state (weights included) is written first and alone decides a resume;
        ``best`` and ``last`` follow. A kill after the state but before them leaves files one
        epoch behind, which ``_restore`` rewrites from the state.
        """
        state = self.training_state(generator)  # every process: it gathers their RNG states
        if not self.runtime.is_main:
            return
        last, best = self.checkpoint_path("last"), self.checkpoint_path("best")
        assert last is not None and best is not None
        save_train_state(state_path(last), state)
        meta = self._checkpoint_meta(metrics)
        if self.improved:
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
            for c in self.callbacks:  # e.g. gradual pruning puts its masks back on the model
                c.on_restore(self, state["model"])
            load_state(self.model, state["model"], str(spath))
            self.optimizer.load_state_dict(state["optimizer"])
            assert self.schedule is not None
            self.schedule.load_state_dict(state["schedule"])
            self.scaler.load_state_dict(state["scaler"])
            rngs = state["rng"]
            set_rng_state(rngs[min(self.runtime.rank, len(rngs) - 1)], generator)
            self.epoch, self.step = int(state["epoch"]), int(state["step"])
            self.history = History.from_dict(state["history"])
            self.step_fn.load_state_dict(state.get("step_fn", {}))
            saved = state.get("callbacks", {})
            for c in self.callbacks:
                if c.state_key in saved:
                    c.load_state_dict(saved[c.state_key])
            self.should_stop = self.best.stopped
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"cannot resume from {spath}: {exc!r}") from None
        self._restore_best(spath)
        if self.writes_files and self.history.epochs:
            last = self.checkpoint_path("last")
            assert last is not None
            if _step_of(last) != self.step:
                save_checkpoint(last, self.model, self._checkpoint_meta(self.history.epochs[-1]))
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
            self.best.best_state = {k: v.clone() for k, v in self.model.state_dict().items()}
            if self.writes_files and _step_of(best) != self.step:
                save_checkpoint(best, self.model, self._checkpoint_meta(self.history.epochs[-1]))
            return
        if _step_of(best) != best_step:
            log.warning(
                "best checkpoint %s is not the one from step %s: not restored", best, best_step
            )
            return
        self.best.best_state = load_weights(best, copy.deepcopy(self.model)).state_dict()

    def _show_progress(self) -> bool:
        """A bar where a person watches: a terminal or a notebook (tqdm.auto draws a widget)."""
        mode = self.config.progress
        watched = sys.stderr.isatty() or "ipykernel" in sys.modules
        return self.runtime.is_main and (mode is True or (mode == "auto" and watched))


def _correct(out: StepOutput) -> torch.Tensor:
    """Correct predictions in a batch; soft targets count their most likely class."""
    if out.logits is None or out.target is None:
        return torch.zeros((), dtype=torch.float64, device=out.loss.device)
    target = out.target.argmax(1) if out.target.dim() > 1 else out.target
    return (out.logits.detach().argmax(1) == target).sum().double()


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
