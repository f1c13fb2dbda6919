"""Quantization-aware training: it recovers what low-bit PTQ loses, and converts cleanly."""

from __future__ import annotations

import copy

import torch
from torch import nn

from dlforge.compress.quantize.fakequant import (
    QuantConfig,
    calibrate,
    convert_qat,
    prepare,
    ptq,
    qat,
    start_qat,
)
from dlforge.train import OptimizerConfig, TrainConfig, Trainer


def accuracy(model: nn.Module, digits) -> float:
    x, y = digits.test
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_qat_recovers_low_bit_accuracy(digits, small_cnn) -> None:
    model = copy.deepcopy(small_cnn)
    w4a4 = QuantConfig(weight_bits=4, activation_bits=4)
    post = accuracy(ptq(model, digits.loader("train", 64), w4a4).model, digits)
    loader = digits.loader("train", 64, True, torch.Generator().manual_seed(1))
    cfg = TrainConfig(epochs=4, progress=False, optimizer=OptimizerConfig(lr=1e-3))
    aware = qat(model, loader, None, w4a4, cfg, freeze_bn_epoch=2)
    assert accuracy(aware.model, digits) > post + 0.01
    assert aware.folded_bn == ["1", "4"]  # BN trained with the model, folded at the end
    assert not any(isinstance(m, nn.BatchNorm2d) for m in aware.model.modules())


def test_bn_statistics_freeze_at_the_chosen_epoch(digits, small_cnn) -> None:
    plan = prepare(small_cnn, QuantConfig(), fold_bn=False)
    calibrate(plan, digits.loader("train", 64))
    start_qat(plan)
    bn = next(m for m in plan.model.modules() if isinstance(m, nn.BatchNorm2d))
    seen = []

    def record(epoch: int, module: nn.Module) -> None:
        from dlforge.compress.quantize.fakequant import freeze_batch_norm

        if epoch >= 1:
            freeze_batch_norm(module)
        seen.append(bn.running_mean.clone())

    cfg = TrainConfig(epochs=3, progress=False, optimizer=OptimizerConfig(lr=1e-3))
    Trainer(plan.model, cfg, on_train_epoch_start=record).fit(digits.loader("train", 64))
    assert not torch.equal(seen[0], seen[1])  # epoch 0 updated the statistics
    assert torch.equal(seen[1], seen[2])  # frozen from epoch 1 on
    assert torch.equal(seen[2], bn.running_mean)


def test_conversion_keeps_the_function(digits, small_cnn) -> None:
    for lsq in (False, True):
        plan = prepare(small_cnn, QuantConfig(learn_step_size=lsq), fold_bn=False)
        calibrate(plan, digits.loader("train", 64))
        start_qat(plan)
        plan.model.eval()
        x = digits.test[0]
        with torch.no_grad():
            before = plan.model(x)
            after = convert_qat(copy.deepcopy(plan)).model(x)
        assert (before.argmax(1) == after.argmax(1)).float().mean() >= 0.99
        assert (before - after).abs().mean() < 0.05 * before.abs().mean()
