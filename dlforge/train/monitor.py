"""Gradient health: per-layer gradient norms each epoch, with vanishing/exploding layers flagged.

Clipping treats exploding gradients; it cannot help vanishing ones (those call for better
initialisation, normalisation or residual connections). The flags say which one you have.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import nn

from dlforge.train.config import GradMonitorConfig


def layer_of(param_name: str) -> str:
    """'blocks.0.conv1.weight' -> 'blocks.0.conv1': the module that owns the parameter."""
    return param_name.rpartition(".")[0] or param_name


class GradientMonitor:
    def __init__(self, model: nn.Module, cfg: GradMonitorConfig) -> None:
        self.cfg = cfg
        self.named = [(layer_of(n), p) for n, p in model.named_parameters() if p.requires_grad]
        self.layers = sorted({name for name, _ in self.named}, key=[n for n, _ in self.named].index)
        self._sums: dict[str, float] = defaultdict(float)
        self._samples = 0

    def should_sample(self, step: int) -> bool:
        return self.cfg.every_n_steps > 0 and step % self.cfg.every_n_steps == 0

    @torch.no_grad()
    def sample(self) -> None:
        """Record each layer's gradient L2 norm (call after unscaling, before clipping)."""
        grads = [(name, p.grad) for name, p in self.named if p.grad is not None]
        if not grads:
            return
        norms = torch._foreach_norm([g.float() for _, g in grads])
        squares: dict[str, float] = defaultdict(float)
        for (name, _), n in zip(grads, torch.stack(norms).tolist()):
            squares[name] += n * n
        for name, sq in squares.items():
            self._sums[name] += sq**0.5
        self._samples += 1

    def epoch_summary(self) -> dict[str, Any]:
        """Mean norm per layer over the epoch's samples, and the flagged layers; then reset."""
        if self._samples == 0:
            return {"norms": {}, "vanishing": [], "exploding": []}
        norms = {
            name: self._sums[name] / self._samples for name in self.layers if name in self._sums
        }
        self._sums.clear()
        self._samples = 0
        return {
            "norms": norms,
            "vanishing": [n for n, v in norms.items() if v < self.cfg.vanishing_below],
            "exploding": [n for n, v in norms.items() if v > self.cfg.exploding_above or v != v],
        }
