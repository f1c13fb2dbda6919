"""Recurrent sequence classifiers: a GRU or LSTM over a 1-D signal, pooled by attention.

A signal ``(C, L)`` is read as ``L`` steps of ``C`` features. The recurrent outputs are pooled
into one vector by gated-attention pooling (``pooling="attention"``, the default: every step
can contribute, weighted by a learned score), their mean, or the last step's output.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dlforge.config import ConfigError
from dlforge.models.attention import AttentionPooling
from dlforge.models.registry import register_model

CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}


class RecurrentClassifier(nn.Module):
    def __init__(
        self, features: int, num_classes: int, cell: str, hidden: int, layers: int, pooling: str
    ) -> None:
        super().__init__()
        self.rnn = CELLS[cell](features, hidden, num_layers=layers, batch_first=True)
        self.pool = AttentionPooling(hidden, hidden) if pooling == "attention" else None
        self.pooling = pooling
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.rnn(x.transpose(1, 2))[0]  # (batch, steps, hidden)
        if self.pool is not None:
            return self.head(self.pool(out))
        if self.pooling == "mean":
            return self.head(out.mean(1))
        return self.head(out[:, -1])


@register_model("rnn")
def rnn(
    input_shape: Sequence[int],
    num_classes: int,
    cell: str = "gru",
    hidden: int = 64,
    layers: int = 1,
    pooling: str = "attention",
) -> nn.Module:
    """GRU/LSTM over the steps of a (C, L) signal, attention-pooled (or mean/last)."""
    if len(input_shape) != 2:
        raise ConfigError(f"rnn needs (C, L) inputs, got shape {tuple(input_shape)}")
    if cell not in CELLS:
        raise ConfigError(f"rnn: cell must be one of {sorted(CELLS)}, got '{cell}'")
    if pooling not in ("attention", "mean", "last"):
        raise ConfigError(f"rnn: pooling must be attention, mean or last, got '{pooling}'")
    return RecurrentClassifier(input_shape[0], num_classes, cell, hidden, layers, pooling)
