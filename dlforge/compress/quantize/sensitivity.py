"""Per-layer sensitivity and mixed-precision bit allocation for weights.

``layer_sensitivity`` quantizes one layer's weights at a time (per-channel symmetric, the rest of
the model untouched) and records the accuracy drop. ``choose_bits`` then lowers bits greedily
where the accuracy lost per byte saved is smallest, until a size budget is met or while an
accuracy budget allows; the result is measured again, not only predicted, since drops do not
add up exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dlforge.compress.quantize.qscheme import QuantSpec, compute_qparams, fake_quantize

LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)
Evaluate = Callable[[nn.Module], float]


def weight_layers(model: nn.Module) -> dict[str, nn.Conv1d | nn.Conv2d | nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LAYERS)}


@torch.no_grad()
def quantize_weights(model: nn.Module, bits: dict[str, int]) -> nn.Module:
    """A copy of ``model`` whose named layers carry per-channel symmetric ``bits``-bit weights."""
    model = copy.deepcopy(model)
    layers = weight_layers(model)
    for name, b in bits.items():
        if name not in layers:
            raise ValueError(f"no conv/linear layer named '{name}' (layers: {sorted(layers)})")
        w = layers[name].weight
        spec = QuantSpec(bits=b, per_channel=True)
        flat = w.reshape(w.shape[0], -1)
        scale, zp = compute_qparams(flat.amin(1), flat.amax(1), spec)
        w.copy_(fake_quantize(w, scale, zp, spec.qmin, spec.qmax, axis=0))
    return model


def layer_sensitivity(
    model: nn.Module, evaluate: Evaluate, bits_options: Sequence[int] = (8, 4, 2)
) -> list[dict[str, Any]]:
    """Accuracy drop of quantizing each layer alone, at each bit width."""
    baseline = evaluate(model)
    rows = []
    for name, layer in weight_layers(model).items():
        for b in bits_options:
            acc = evaluate(quantize_weights(model, {name: b}))
            rows.append(
                {
                    "layer": name,
                    "params": layer.weight.numel(),
                    "bits": b,
                    "accuracy": acc,
                    "drop": baseline - acc,
                }
            )
    return rows


def weight_bytes(params: dict[str, int], bits: dict[str, int]) -> float:
    return sum(params[n] * bits[n] for n in params) / 8


def choose_bits(
    rows: list[dict[str, Any]], max_drop: float | None = None, max_bytes: float | None = None
) -> dict[str, int]:
    """Greedy allocation from the sensitivity table; give one budget (accuracy or bytes)."""
    if (max_drop is None) == (max_bytes is None):
        raise ValueError("give exactly one budget: max_drop (accuracy points) or max_bytes")
    drop = {(r["layer"], r["bits"]): max(r["drop"], 0.0) for r in rows}
    params = {r["layer"]: r["params"] for r in rows}
    options = sorted({r["bits"] for r in rows}, reverse=True)
    bits = dict.fromkeys(params, options[0])

    def step(layer: str) -> tuple[float, int] | None:
        i = options.index(bits[layer])
        if i + 1 == len(options):
            return None
        lower = options[i + 1]
        cost = drop[(layer, lower)] - drop[(layer, bits[layer])]
        saved = params[layer] * (bits[layer] - lower) / 8
        return cost / saved, lower

    def total_drop(assignment: dict[str, int]) -> float:
        return sum(drop[(n, b)] for n, b in assignment.items())

    while max_bytes is None or weight_bytes(params, bits) > max_bytes:
        candidates = sorted((s[0], layer, s[1]) for layer in bits if (s := step(layer)) is not None)
        if max_drop is not None:  # only moves that keep the predicted drop within budget
            candidates = [c for c in candidates if total_drop({**bits, c[1]: c[2]}) <= max_drop]
        if not candidates:
            break
        _, layer, lower = candidates[0]
        bits[layer] = lower
    return bits


@dataclass
class MixedPrecision:
    bits: dict[str, int]
    baseline_accuracy: float
    accuracy: float
    weight_bytes: float
    fp32_weight_bytes: float
    sensitivity: list[dict[str, Any]]
    model: nn.Module

    def summary(self) -> dict[str, Any]:
        return {
            "bits": self.bits,
            "baseline_accuracy": self.baseline_accuracy,
            "accuracy": self.accuracy,
            "weight_bytes": self.weight_bytes,
            "fp32_weight_bytes": self.fp32_weight_bytes,
            "sensitivity": self.sensitivity,
        }


def mixed_precision(
    model: nn.Module,
    evaluate: Evaluate,
    max_drop: float | None = None,
    max_bytes: float | None = None,
    bits_options: Sequence[int] = (8, 4, 2),
) -> MixedPrecision:
    rows = layer_sensitivity(model, evaluate, bits_options)
    bits = choose_bits(rows, max_drop, max_bytes)
    params = {r["layer"]: r["params"] for r in rows}
    mixed = quantize_weights(model, bits)
    return MixedPrecision(
        bits=bits,
        baseline_accuracy=evaluate(model),
        accuracy=evaluate(mixed),
        weight_bytes=weight_bytes(params, bits),
        fp32_weight_bytes=weight_bytes(params, dict.fromkeys(params, 32)),
        sensitivity=rows,
        model=mixed,
    )
