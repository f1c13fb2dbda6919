from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dlforge.compress.distill import Distiller, distillation_loss, soft_target_loss, width_scaled
from dlforge.models import create_model
from dlforge.train import OptimizerConfig, TrainConfig, Trainer


def test_soft_target_loss_matches_the_formula() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(8, 5), torch.randn(8, 5)
    T = 3.0
    p = F.softmax(t / T, 1)
    expected = (p * (p.log() - F.log_softmax(s / T, 1))).sum(1).mean() * T * T
    torch.testing.assert_close(soft_target_loss(s, t, T), expected)
    assert soft_target_loss(t, t, T).item() == pytest.approx(0.0, abs=1e-6)
    y = torch.randint(0, 5, (8,))
    full = distillation_loss(s, t, y, T, 0.7)
    torch.testing.assert_close(full, 0.3 * F.cross_entropy(s, y) + 0.7 * expected)


def test_width_scaled_student_has_a_quarter_of_the_parameters() -> None:
    teacher = create_model("cnn", (1, 8, 8), 10, channels=[32, 64])
    student = create_model("cnn", (1, 8, 8), 10, **width_scaled({"channels": [32, 64]}, "cnn", 0.5))
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert 0.2 < n(student) / n(teacher) < 0.3
    assert width_scaled({}, "resnet20", 0.5) == {"width": 8}
    with pytest.raises(ValueError, match="no width rule"):
        width_scaled({}, "logistic", 0.5)


def test_distillation_trains_with_the_trainer_and_hints(digits) -> None:
    torch.manual_seed(0)
    teacher = create_model("cnn", digits.input_shape, digits.num_classes, channels=[32, 64])
    Trainer(teacher, TrainConfig(epochs=6, progress=False, optimizer=OptimizerConfig(lr=3e-3))).fit(
        digits.loader("train", 64, True, torch.Generator().manual_seed(0))
    )
    teacher.eval()
    before = [p.clone() for p in teacher.parameters()]
    student = create_model("cnn", digits.input_shape, digits.num_classes, channels=[8, 16])
    # alpha = 1: the student learns from the teacher's outputs alone (plus the feature hint)
    distiller = Distiller(
        student,
        teacher,
        temperature=1.0,
        alpha=1.0,
        hints={"3": "3"},
        hint_weight=0.1,
        example=digits.train[0][:2],
    )
    names = {n for n, _ in distiller.named_parameters()}
    assert any(n.startswith("adapters.") for n in names) and not any("teacher" in n for n in names)
    cfg = TrainConfig(epochs=8, progress=False, optimizer=OptimizerConfig(lr=1e-2))
    history = Trainer(distiller, cfg, loss_fn=distiller.loss).fit(
        digits.loader("train", 64, True, torch.Generator().manual_seed(1))
    )
    assert history.epochs[-1]["train_loss"] < 0.5 * history.epochs[0]["train_loss"]
    x = digits.val[0]
    with torch.no_grad():
        agreement = (student.eval()(x).argmax(1) == teacher(x).argmax(1)).float().mean().item()
    assert agreement > 0.8  # it imitates the teacher without seeing a label
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))  # teacher frozen
    with pytest.raises(ValueError, match="needs an example input"):
        Distiller(student, teacher, hints={"3": "3"})
