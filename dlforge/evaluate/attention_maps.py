"""Attention maps of a trained model for a few inputs, for the report.

dlforge's ``MultiHeadAttention`` and ``AttentionPooling`` are asked to keep their weights
(head-averaged), whatever their callers request; torch's ``nn.MultiheadAttention`` returns them
by default and is read through a forward hook. Models without attention give nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dlforge.models.attention import AttentionPooling, MultiHeadAttention


@torch.no_grad()
def attention_maps(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per attention module (by name): weights for the batch ``x``, ``(n, queries, keys)`` for
    attention layers, ``(n, steps)`` for attention pooling."""
    maps: dict[str, torch.Tensor] = {}
    hooks, restore = [], []
    keepers = [m for m in model.modules() if isinstance(m, MultiHeadAttention | AttentionPooling)]
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            hooks.append(m.register_forward_hook(_keep_weights(maps, name)))
        elif isinstance(m, MultiHeadAttention | AttentionPooling):
            restore.append((m, m.keep_weights))
            m.keep_weights = True
    was_training = model.training
    try:
        model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
        for m, value in restore:
            m.keep_weights = value
        model.train(was_training)
    for name, m in model.named_modules():
        if m in keepers and m.last_weights is not None:
            maps[name] = m.last_weights.cpu()
            m.last_weights = None
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return dict(sorted(maps.items(), key=lambda kv: order[kv[0]]))


def _keep_weights(maps: dict[str, torch.Tensor], name: str) -> Any:
    def hook(_m: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, tuple) and output[1] is not None:
            weights = output[1]
            maps[name] = (weights.mean(1) if weights.dim() == 4 else weights).detach().cpu()

    return hook


def attention_examples(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, class_names: list[str], n: int = 4
) -> dict[str, Any] | None:
    """The last attention module's maps for the first ``n`` samples, with their inputs, labels
    and predictions, as JSON-ready lists; None for a model without attention."""
    x, y = x[:n], y[:n]
    maps = attention_maps(model, x)
    if not maps:
        return None
    name = list(maps)[-1]
    with torch.no_grad():
        pred = model.eval()(x).argmax(1)
    return {
        "layer": name,
        "weights": maps[name].tolist(),
        "inputs": x.flatten(1).tolist() if x.dim() == 3 else x[:, 0].tolist(),
        "labels": [class_names[int(i)] for i in y],
        "predictions": [class_names[int(i)] for i in pred],
    }
