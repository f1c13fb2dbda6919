"""Users' own attention and recurrent models, written with torch's modules only (as a user
would bring them): named in tests as ``attention_zoo:gru_mha`` and so on."""

from __future__ import annotations

import torch
from torch import nn


class GruMha(nn.Module):
    """A GRU, torch's nn.MultiheadAttention over its outputs, mean pooling, a linear head."""

    def __init__(self, features: int, num_classes: int, hidden: int = 32) -> None:
        super().__init__()
        self.gru = nn.GRU(features, hidden, batch_first=True)
        self.attn = nn.MultiheadAttention(hidden, 4, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(x.transpose(1, 2))
        a, _ = self.attn(h, h, h)
        return self.head(a.mean(1))


class TorchTransformer(nn.Module):
    """Patches of a 1-D signal through torch's nn.TransformerEncoder."""

    def __init__(self, channels: int, length: int, num_classes: int, patch: int = 4) -> None:
        super().__init__()
        self.patch = patch
        self.embed = nn.Linear(channels * patch, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, n = x.shape
        tokens = x.reshape(b, c, n // self.patch, self.patch).permute(0, 2, 1, 3).flatten(2)
        return self.head(self.encoder(self.embed(tokens)).mean(1))


class LstmClassifier(nn.Module):
    """A two-layer LSTM read at its last step."""

    def __init__(self, features: int, num_classes: int, hidden: int = 32) -> None:
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x.transpose(1, 2))
        return self.head(out[:, -1])


def gru_mha(input_shape, num_classes, hidden=32):
    return GruMha(input_shape[0], num_classes, hidden)


def torch_transformer(input_shape, num_classes):
    return TorchTransformer(input_shape[0], input_shape[1], num_classes)


def lstm(input_shape, num_classes, hidden=32):
    return LstmClassifier(input_shape[0], num_classes, hidden)
