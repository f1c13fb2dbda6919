"""Learning-rate schedules with optional linear warm-up, applied per optimizer step.

One small class instead of chaining torch's schedulers, because warm-up must compose with every
schedule (``SequentialLR`` cannot wrap ``ReduceLROnPlateau``) and the state must be plain numbers
for a safetensors/JSON checkpoint. Tests check each schedule against torch's own scheduler.
"""

from __future__ import annotations

import bisect
import math
from typing import Any

import torch

from dlforge.config import ConfigError
from dlforge.train.config import ScheduleConfig


def metric_mode(name: str) -> str:
    """'min' for losses and errors, 'max' for scores (the naming convention of the toolkit)."""
    lowered = name.lower()
    return "min" if ("loss" in lowered or "error" in lowered) else "max"


def _cos_anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


class LRSchedule:
    """Sets every param group's LR from (base LR, optimizer step, plateau state)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        cfg: ScheduleConfig,
        steps_per_epoch: int,
        total_steps: int,
    ) -> None:
        self.optimizer, self.cfg = optimizer, cfg
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.total_steps = max(1, total_steps)
        self.base_lrs = [float(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups]
        for g, base in zip(optimizer.param_groups, self.base_lrs):
            g["initial_lr"] = base
        self.step_count = 0
        self.plateau_scale = 1.0
        self.plateau_best: float | None = None
        self.plateau_bad_epochs = 0
        self._apply()

    # -- the LR for one optimizer step ---------------------------------------------------------
    def lr_at(self, base: float, step: int) -> float:
        c = self.cfg
        warm = c.warmup_steps
        factor = (step + 1) / warm if step < warm else 1.0
        epoch = step // self.steps_per_epoch
        if c.name == "constant":
            lr = base
        elif c.name == "step":
            lr = base * c.gamma ** (epoch // c.step_size)
        elif c.name == "multistep":
            lr = base * c.gamma ** bisect.bisect_right(sorted(c.milestones), epoch)
        elif c.name == "cosine":
            span = max(1, self.total_steps - warm)
            t = min(max(step - warm, 0), span)
            lr = c.min_lr + (base - c.min_lr) * (1 + math.cos(math.pi * t / span)) / 2
        elif c.name == "cyclic_cosine":
            # Snapshot ensembles (Huang et al., 2017): cosine from the base rate to min_lr in
            # each of ``cycles`` equal cycles, restarting at the base rate (SGDR's restarts).
            period = max(1, self.total_steps // c.cycles)
            t = step % period
            lr = c.min_lr + (base - c.min_lr) * (1 + math.cos(math.pi * t / period)) / 2
        elif c.name == "onecycle":
            lr = self._onecycle(base, step)
        else:  # plateau
            lr = max(base * self.plateau_scale, c.min_lr)
        return lr * factor

    def _onecycle(self, base: float, step: int) -> float:
        # The same phases as torch.optim.lr_scheduler.OneCycleLR (cosine, two phases).
        c = self.cfg
        start = base / c.div_factor
        final = start / c.final_div_factor
        rise_end = float(c.pct_start * self.total_steps) - 1
        fall_end = float(self.total_steps) - 1
        step = min(step, self.total_steps - 1)
        if step <= rise_end:
            return _cos_anneal(start, base, step / rise_end if rise_end > 0 else 1.0)
        return _cos_anneal(base, final, (step - rise_end) / max(fall_end - rise_end, 1e-12))

    def _apply(self) -> None:
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = self.lr_at(base, self.step_count)

    # -- events from the Trainer ---------------------------------------------------------------
    def step(self) -> None:
        """Call after each optimizer step."""
        self.step_count += 1
        self._apply()

    def epoch_end(self, metrics: dict[str, float]) -> None:
        """Plateau logic of ReduceLROnPlateau (relative threshold, no cooldown)."""
        c = self.cfg
        if c.name != "plateau":
            return
        if c.plateau_monitor not in metrics:
            raise ConfigError(
                f"{c.plateau_monitor!r} is not an epoch metric; choose one of {sorted(metrics)}",
                "train.schedule.plateau_monitor",
            )
        value = float(metrics[c.plateau_monitor])
        minimise = metric_mode(c.plateau_monitor) == "min"
        best = self.plateau_best
        if best is None:
            improved = True
        elif minimise:
            improved = value < best * (1 - c.plateau_threshold)
        else:
            improved = value > best * (1 + c.plateau_threshold)
        if improved:
            self.plateau_best, self.plateau_bad_epochs = value, 0
        else:
            self.plateau_bad_epochs += 1
        if self.plateau_bad_epochs > c.plateau_patience:
            self.plateau_scale *= c.plateau_factor
            self.plateau_bad_epochs = 0
        self._apply()

    @property
    def lrs(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {
            "step_count": self.step_count,
            "plateau_scale": self.plateau_scale,
            "plateau_best": self.plateau_best,
            "plateau_bad_epochs": self.plateau_bad_epochs,
            "base_lrs": self.base_lrs,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step_count"])
        self.plateau_scale = float(state["plateau_scale"])
        self.plateau_best = state["plateau_best"]
        self.plateau_bad_epochs = int(state["plateau_bad_epochs"])
        self.base_lrs = [float(b) for b in state["base_lrs"]]
        self._apply()
