"""Augmentation: seeded per epoch and batch, training batches only, soft targets that add up."""

from __future__ import annotations

import pytest
import torch

from dlforge.data.augment import (
    BatchAugment,
    augment_signals,
    mix_batch,
    seeded_generator,
    time_warp,
)
from dlforge.data.config import AugmentConfig, ImageAugmentConfig, MixConfig, SignalAugmentConfig


def images(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 8, 8, generator=g), torch.arange(n) % 3


def test_draws_depend_on_seed_epoch_and_batch_only() -> None:
    cfg = AugmentConfig(image=ImageAugmentConfig(crop_padding=2, rotation=15.0, erasing=0.5))
    x, y = images()
    a, b = BatchAugment(cfg, 3), BatchAugment(cfg, 3)
    torch.manual_seed(1)
    out_a = a(x, y)[0]
    torch.manual_seed(99)  # the global generator plays no part ...
    state = torch.get_rng_state()
    out_b = b(x, y)[0]
    assert torch.equal(out_a, out_b)
    assert torch.equal(state, torch.get_rng_state())  # ... and is left as it was
    assert not torch.equal(a(x, y)[0], out_a)  # the next batch draws anew
    a.set_epoch(1)
    b.set_epoch(1)
    assert torch.equal(a(x, y)[0], b(x, y)[0])
    assert out_a.shape == x.shape and not torch.equal(out_a, x)


def test_crop_with_padding_shifts_the_image() -> None:
    x = torch.zeros(64, 1, 8, 8)
    x[:, :, 3:5, 3:5] = 1.0
    out = BatchAugment(AugmentConfig(image=ImageAugmentConfig(crop_padding=2)), 2)(
        x, torch.zeros(64, dtype=torch.long)
    )[0]
    assert out.shape == x.shape
    assert torch.allclose(out.sum(dim=(1, 2, 3)), torch.full((64,), 4.0))  # moved, not cut
    assert len({tuple(torch.nonzero(o[0])[0].tolist()) for o in out}) > 5  # many offsets


def test_signal_augmentations() -> None:
    x = torch.arange(20.0).view(1, 1, 20).repeat(4, 1, 1)
    assert torch.allclose(time_warp(x, torch.ones(4)), x)  # a factor of 1 changes nothing
    warped = time_warp(x, torch.full((4,), 2.0))  # zoom in around the centre
    assert warped.shape == x.shape and warped[0, 0, 10] == pytest.approx(9.75)
    g = seeded_generator(0)
    shifted = augment_signals(x, SignalAugmentConfig(shift=3), g)
    for row in shifted[:, 0]:  # a circular shift keeps every value
        assert sorted(row.tolist()) == list(range(20))


def test_mixup_targets_are_the_mixing_weights() -> None:
    x, y = images(16)
    g = seeded_generator(3)
    onehot = torch.nn.functional.one_hot(torch.arange(16), 16).float()  # a class per image
    mixed, soft = mix_batch(
        onehot.view(16, 16), torch.arange(16), 16, MixConfig(mixup_alpha=0.4), g
    )
    # Inputs that are one-hot class codes mix exactly like the targets do.
    torch.testing.assert_close(mixed, soft)
    assert torch.allclose(soft.sum(1), torch.ones(16))
    del x, y


def test_cutmix_weights_equal_the_pasted_area() -> None:
    x = torch.zeros(4, 1, 10, 10)
    x[0] = 1.0  # only image 0 is ones: its share in each mixed image is visible
    y = torch.tensor([0, 1, 1, 1])
    for seed in range(5):
        out, soft = mix_batch(x, y, 2, MixConfig(cutmix_alpha=1.0), seeded_generator(seed))
        # Image 0 is the only one of class 0: the share of its pixels in each mixed image is
        # that image's target weight for class 0.
        torch.testing.assert_close(out.mean(dim=(1, 2, 3)), soft[:, 0])
        assert torch.allclose(soft.sum(1), torch.ones(4))


def test_augmentation_applies_to_training_batches_only(digits) -> None:
    from dlforge.models import create_model
    from dlforge.train import ClassificationStep, TrainConfig, Trainer

    calls: list[int] = []

    def augment(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(len(x))
        return x, y

    model = create_model("mlp", digits.input_shape, digits.num_classes, hidden=[16])
    trainer = Trainer(model, TrainConfig(epochs=1, progress=False),
                      step=ClassificationStep(augment=augment))  # fmt: skip
    trainer.fit(digits.loader("train", 256), digits.loader("val", 256))
    assert sum(calls) == len(digits.train[1])  # every training sample, no validation one
