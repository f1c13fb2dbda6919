from __future__ import annotations

import pytest
import torch
from torch import nn

from dlforge.compress.quantize.sensitivity import (
    choose_bits,
    layer_sensitivity,
    mixed_precision,
    quantize_weights,
)


@pytest.fixture(scope="module")
def setup(digits, small_cnn):
    model = small_cnn
    x, y = digits.val

    def evaluate(m: nn.Module) -> float:
        with torch.no_grad():
            return (m.eval()(x).argmax(1) == y).float().mean().item()

    return model.eval(), evaluate


def test_sensitivity_table(setup) -> None:
    model, evaluate = setup
    rows = layer_sensitivity(model, evaluate, (8, 2))
    assert [(r["layer"], r["bits"]) for r in rows] == [
        ("0", 8),
        ("0", 2),
        ("3", 8),
        ("3", 2),
        ("8", 8),
        ("8", 2),
    ]
    assert all(abs(r["drop"]) <= 0.01 for r in rows if r["bits"] == 8)
    assert max(r["drop"] for r in rows if r["bits"] == 2) > 0.02
    q = quantize_weights(model, {"0": 2})
    assert q[0].weight.unique().numel() <= 3 * 16  # 3 levels (symmetric 2-bit) per channel
    assert torch.equal(q[3].weight, model[3].weight)  # other layers untouched


def test_budgets(setup) -> None:
    model, evaluate = setup
    rows = layer_sensitivity(model, evaluate, (8, 4, 2))
    params = {r["layer"]: r["params"] for r in rows}
    budget = sum(params.values()) * 4 / 8  # as small as all-4-bit
    bits = choose_bits(rows, max_bytes=budget)
    assert sum(params[n] * b for n, b in bits.items()) / 8 <= budget
    result = mixed_precision(model, evaluate, max_drop=0.01)
    assert result.baseline_accuracy - result.accuracy <= 0.03
    assert result.weight_bytes < result.fp32_weight_bytes / 4  # below 8 bits on average
    with pytest.raises(ValueError, match="exactly one budget"):
        choose_bits(rows)
