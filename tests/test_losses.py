"""Imbalance losses against scikit-learn's class weights and the published formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight

from dlforge.config import ConfigError
from dlforge.train.losses import (
    FocalLoss,
    LDAMLoss,
    LogitAdjustedLoss,
    WeightedCrossEntropy,
    adjust_logits,
    class_counts,
    class_weights,
)
from dlforge.train.step import ClassificationStep

COUNTS = np.array([500, 120, 30, 5])


def labels() -> np.ndarray:
    return np.repeat(np.arange(4), COUNTS)


def test_inverse_weights_equal_scikit_learns_balanced() -> None:
    y = labels()
    expected = compute_class_weight("balanced", classes=np.arange(4), y=y)
    got = class_weights(class_counts(y, 4), "inverse").numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_other_schemes_follow_their_formulas() -> None:
    sqrt = class_weights(COUNTS, "inverse_sqrt").numpy()
    np.testing.assert_allclose(sqrt / sqrt[0], np.sqrt(COUNTS[0] / COUNTS), rtol=1e-6)
    beta = 0.99
    eff = class_weights(COUNTS, "effective", beta).numpy()
    formula = (1 - beta) / (1 - beta**COUNTS)  # Cui et al. 2019, eq. 6 (before normalising)
    np.testing.assert_allclose(eff / eff[0], formula / formula[0], rtol=1e-6)
    for w in (sqrt, eff):  # the average training sample weighs 1
        assert (w * COUNTS).sum() / COUNTS.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(class_weights(COUNTS, "effective", 0.0).numpy(), 1.0, rtol=1e-6)
    near_one = class_weights(COUNTS, "effective", 1 - 1e-9).numpy()
    np.testing.assert_allclose(near_one, class_weights(COUNTS, "inverse").numpy(), rtol=1e-3)


def test_bad_counts_are_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"classes \[2\] have no training samples"):
        class_weights([10, 3, 0])
    with pytest.raises(ConfigError, match="scheme 'median' is unknown"):
        class_weights([10, 3], "median")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"class ids must be in 0..2"):
        class_counts([0, 1, 3], 3)


def test_weighted_cross_entropy_is_torchs() -> None:
    z, y = torch.randn(32, 4), torch.randint(0, 4, (32,))
    w = class_weights(COUNTS)
    torch.testing.assert_close(WeightedCrossEntropy(w)(z, y), F.cross_entropy(z, y, w))


def test_focal_loss_multiclass_formula_and_limits() -> None:
    torch.manual_seed(0)
    z, y = torch.randn(64, 5), torch.randint(0, 5, (64,))
    p = torch.softmax(z.double(), 1)[torch.arange(64), y]
    gamma = 2.0
    expected = (-((1 - p) ** gamma) * torch.log(p)).mean()
    torch.testing.assert_close(FocalLoss(gamma)(z, y).double(), expected, rtol=1e-5, atol=1e-6)
    # gamma = 0 with per-class alpha is weighted cross-entropy, sample by sample
    alpha = torch.tensor([0.5, 1.0, 2.0, 1.5, 1.0])
    got = FocalLoss(0.0, alpha, reduction="none")(z, y)
    torch.testing.assert_close(got, F.cross_entropy(z, y, alpha, reduction="none"))
    # easy samples weigh less than under cross-entropy; hard ones nearly as much
    ce = F.cross_entropy(z, y, reduction="none")
    focal = FocalLoss(2.0, reduction="none")(z, y)
    assert (focal <= ce + 1e-7).all()


def reference_sigmoid_focal(x: np.ndarray, t: np.ndarray, alpha: float, gamma: float) -> np.ndarray:
    """Lin et al. 2017, eq. 5, written independently in numpy with a stable log-sigmoid (the
    formula torchvision.ops.sigmoid_focal_loss implements)."""
    log_p = -np.logaddexp(0, -x)  # log sigmoid(x)
    log_1mp = -np.logaddexp(0, x)  # log (1 - sigmoid(x))
    p = np.exp(log_p)
    p_t = np.where(t == 1, p, 1 - p)
    log_pt = np.where(t == 1, log_p, log_1mp)
    alpha_t = np.where(t == 1, alpha, 1 - alpha) if alpha >= 0 else 1.0
    return -alpha_t * (1 - p_t) ** gamma * log_pt


@pytest.mark.parametrize(("alpha", "gamma"), [(0.25, 2.0), (-1.0, 2.0), (0.75, 0.5), (0.5, 0.0)])
def test_binary_focal_matches_the_published_formula(alpha: float, gamma: float) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 3, 200)
    t = (rng.random(200) < 0.1).astype(np.float64)
    got = FocalLoss(gamma, alpha, reduction="none")(torch.tensor(x), torch.tensor(t))
    np.testing.assert_allclose(
        got.numpy(), reference_sigmoid_focal(x, t, alpha, gamma), rtol=1e-6, atol=1e-9
    )
    if alpha < 0 and gamma == 2.0:  # gamma 0, no alpha: binary cross-entropy
        plain = FocalLoss(0.0, -1.0, reduction="sum")(torch.tensor(x), torch.tensor(t))
        bce = F.binary_cross_entropy_with_logits(torch.tensor(x), torch.tensor(t), reduction="sum")
        torch.testing.assert_close(plain, bce)


def test_ldam_margins_and_deferred_reweighting() -> None:
    loss = LDAMLoss(COUNTS, max_margin=0.5, scale=30.0, drw_epoch=2, beta=0.999)
    m = loss.margins.numpy()
    assert m.max() == pytest.approx(0.5) and m.argmax() == 3  # the rarest class
    np.testing.assert_allclose(m / m[0], (COUNTS[0] / COUNTS) ** 0.25, rtol=1e-6)
    z, y = torch.randn(16, 4), torch.randint(0, 4, (16,))
    shifted = 30.0 * (z - F.one_hot(y, 4) * torch.tensor(m, dtype=torch.float32))
    torch.testing.assert_close(loss(z, y), F.cross_entropy(shifted, y))
    step = ClassificationStep(loss_fn=loss)

    class Trainer:  # what the step reads of a trainer
        epoch = 2

    step.loss(Trainer(), z, y)  # type: ignore[arg-type]
    assert loss.reweighting
    w = class_weights(COUNTS, "effective", 0.999)
    torch.testing.assert_close(loss(z, y), F.cross_entropy(shifted, y, w))


def test_logit_adjustment_as_loss_and_post_hoc() -> None:
    z, y = torch.randn(16, 4), torch.randint(0, 4, (16,))
    log_pi = torch.log(torch.tensor(COUNTS / COUNTS.sum(), dtype=torch.float32))
    torch.testing.assert_close(LogitAdjustedLoss(COUNTS, 1.0)(z, y), F.cross_entropy(z + log_pi, y))
    torch.testing.assert_close(adjust_logits(z, COUNTS, 0.0), z)
    flat = torch.zeros(1, 4)  # no evidence: the adjusted prediction is the rarest class
    assert adjust_logits(flat, COUNTS).argmax().item() == 3


def test_ldam_validates_with_plain_cross_entropy() -> None:
    """A monitored val_loss must compare epochs before and after DRW on one scale."""
    import contextlib
    from types import SimpleNamespace

    model = torch.nn.Linear(3, 4).eval()
    x, y = torch.randn(8, 3), torch.randint(0, 4, (8,))
    trainer = SimpleNamespace(epoch=5, to_device=lambda b: b,
                              precision=SimpleNamespace(autocast=contextlib.nullcontext))  # fmt: skip
    step = ClassificationStep(loss_fn=LDAMLoss(COUNTS, drw_epoch=2))
    out = step(model, (x, y), trainer)  # type: ignore[arg-type]
    with torch.no_grad():
        torch.testing.assert_close(out.loss, F.cross_entropy(model(x), y))


def test_losses_that_take_class_ids_refuse_soft_targets_and_smoothing() -> None:
    from dlforge.data import DataConfig, load_data
    from dlforge.recipe import load_recipe
    from dlforge.stages.train import make_step

    data = load_data(DataConfig(source="digits"), seed=0)
    with pytest.raises(ConfigError, match="mixup/cutmix make soft targets"):
        make_step(
            load_recipe(None, ["train.loss.name=focal", "data.augment.mix.mixup_alpha=0.2"]), data
        )
    with pytest.raises(ConfigError, match="has no label smoothing"):
        make_step(load_recipe(None, ["train.loss.name=ldam", "train.label_smoothing=0.1"]), data)
    step = make_step(
        load_recipe(None, ["train.loss.name=weighted", "train.label_smoothing=0.1"]), data
    )
    assert step.loss_fn.label_smoothing == 0.1  # type: ignore[union-attr]
