"""The whole robustness evaluation of one model on a run's data, as the ``robust:`` stage and
``dlforge attack`` report it, and the shorter one every compressed variant gets.

``robustness_report``: curves per attack over the budget, the gradient-masking sanity checks,
common corruptions at five severities, and clean/adversarial example pairs.
``variant_robustness``/``onnx_robustness``: PGD (white-box) on a PyTorch variant, and transfer
plus Square (black-box) on an ONNX file, at one ε, for the compress and quantize tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dlforge.config import DlforgeError
from dlforge.robust.config import EPS_SHARES, RobustConfig
from dlforge.robust.evaluate import (
    AttackSettings,
    Predict,
    accuracy,
    craft,
    predict_of,
    robustness_curves,
    sanity_checks,
    transfer_accuracy,
)
from dlforge.robust.space import InputSpace, InRawUnits, check_continuous, input_space

if TYPE_CHECKING:
    from dlforge.data import DataBundle


@dataclass
class Probe:
    """What every robustness measurement of a run shares: the input space, the attacked test
    samples in raw units, the budgets and the attack settings."""

    space: InputSpace
    x: torch.Tensor  # raw units
    y: torch.Tensor
    eps: list[float]
    eps_l2: list[float]
    compare_eps: float
    settings: AttackSettings

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` (trained on normalised inputs) reading raw ones, in eval mode on the CPU."""
        from dlforge.stages.base import plain_copy

        return InRawUnits(plain_copy(model), self.space).eval()


def probe(data: DataBundle, cfg: RobustConfig, seed: int = 0) -> Probe:
    """The attacked sample (``cfg.samples`` test samples, a seeded draw) and the budgets."""
    x_test, y_test = data.test
    check_continuous(x_test, "the test split")
    space = input_space(data.preprocessing, data.train[0], cfg.bounds)
    n = len(y_test) if cfg.samples == 0 else min(cfg.samples, len(y_test))
    if n == 0:
        raise DlforgeError("robust: the test split is empty; there is nothing to attack")
    pick = torch.randperm(len(y_test), generator=torch.Generator().manual_seed(seed))[:n]
    # Clipped: a test value outside the training split's range (or a float rounding of a bound)
    # is not a valid starting point for a budget that is clipped to the range.
    x = space.clip(space.to_raw(x_test[pick].float()))
    span = space.range if space.range is not None else float(x.max() - x.min())
    dims = math.prod(x.shape[1:])
    eps = cfg.eps if cfg.eps is not None else [s * span for s in EPS_SHARES]
    eps_l2 = cfg.eps_l2 if cfg.eps_l2 is not None else [
        s * span * math.sqrt(dims) for s in EPS_SHARES]  # fmt: skip
    settings = AttackSettings(cfg.steps, cfg.restarts, cfg.cw_steps, cfg.square_queries,
                              cfg.batch_size, seed)  # fmt: skip
    compare = cfg.compare_eps if cfg.compare_eps is not None else 0.1 * span
    return Probe(space, x, y_test[pick], list(eps), list(eps_l2), compare, settings)


def example_pairs(
    model: nn.Module, p: Probe, class_names: list[str], count: int
) -> list[dict[str, Any]]:
    """Up to ``count`` samples the model gets right that PGD at ``compare_eps`` turns wrong:
    the clean and adversarial inputs (raw units) with both predictions."""
    if count == 0:
        return []
    generator = torch.Generator().manual_seed(p.settings.seed)
    adv = craft("pgd", model, p.x, p.y, p.compare_eps, p.space, p.settings, generator)
    run = predict_of(model)
    clean_pred, adv_pred = run(p.x).argmax(1), run(adv).argmax(1)
    flipped = ((clean_pred == p.y) & (adv_pred != p.y)).nonzero()[:, 0][:count]
    return [
        {
            "label": class_names[int(p.y[i])],
            "clean_prediction": class_names[int(clean_pred[i])],
            "adversarial_prediction": class_names[int(adv_pred[i])],
            "clean": p.x[i].tolist(),
            "adversarial": adv[i].tolist(),
            "linf": float((adv[i] - p.x[i]).abs().max()),
        }
        for i in flipped.tolist()
    ]


def robustness_report(
    model: nn.Module, data: DataBundle, cfg: RobustConfig, seed: int = 0
) -> dict[str, Any]:
    """Every attack's curve, the sanity checks, corruptions and example pairs for ``model``."""
    p = probe(data, cfg, seed)
    wrapped = p.wrap(model)
    curves = robustness_curves(wrapped, p.x, p.y, p.space, cfg.attacks, p.eps, p.eps_l2,
                               p.settings)  # fmt: skip
    # ε = the whole range (or 4x the grid's top when unbounded) can reach any input: a model
    # still right there hides its gradients rather than resists.
    big = p.space.range if p.space.range is not None else 4 * max(p.eps)
    generator = torch.Generator().manual_seed(p.settings.seed)
    big_adv = craft("pgd", wrapped, p.x, p.y, big, p.space, p.settings, generator)
    large = {"eps": big, "accuracy": accuracy(predict_of(wrapped), big_adv, p.y)}
    result: dict[str, Any] = {
        "samples": len(p.y),
        "space": p.space.describe(),
        "clean_accuracy": accuracy(predict_of(wrapped), p.x, p.y),
        "curves": curves,
        "large_eps": large,
        "sanity": sanity_checks(curves, large, len(p.y)),
        "compare_eps": p.compare_eps,
        "settings": {"steps": p.settings.steps, "restarts": p.settings.restarts,
                     "cw_steps": p.settings.cw_steps, "square_queries": p.settings.square_queries},
    }  # fmt: skip
    if cfg.corruptions:
        result["corruptions"] = corruptions_of(wrapped, p, seed, cfg.batch_size)
    result["examples"] = example_pairs(wrapped, p, data.class_names, cfg.examples)
    result["input_shape"] = list(p.x.shape[1:])
    return result


def corruptions_of(model: nn.Module, p: Probe, seed: int, batch_size: int) -> dict[str, Any]:
    """The four corruptions of images and signals; a table's features have no neighbours to
    blur or shift into, nor a spatial mean, so a table gets Gaussian noise alone."""
    from dlforge.robust.corruptions import CORRUPTIONS, corruption_curves

    run = predict_of(model)
    x, names = p.x, CORRUPTIONS
    if x.dim() == 2:
        x, names = x.unsqueeze(1), ("gaussian_noise",)
        run = predict_of(nn.Sequential(nn.Flatten(), model))
    return corruption_curves(run, x, p.y, lo=p.space.lo, hi=p.space.hi, names=names,
                             seed=seed, batch_size=batch_size)  # fmt: skip


def variant_robustness(
    model: nn.Module, p: Probe, source: nn.Module | None = None
) -> dict[str, float]:
    """PGD accuracy of a PyTorch variant at ``compare_eps`` (white-box, on its own gradients)
    and, given the uncompressed ``source``, on inputs crafted against the source (transfer)."""
    wrapped = p.wrap(model)
    generator = torch.Generator().manual_seed(p.settings.seed)
    adv = craft("pgd", wrapped, p.x, p.y, p.compare_eps, p.space, p.settings, generator)
    out = {"pgd_accuracy": accuracy(predict_of(wrapped), adv, p.y)}
    if source is not None:
        out["transfer_accuracy"] = transfer_accuracy(
            p.wrap(source), predict_of(wrapped), p.x, p.y, p.compare_eps, p.space, p.settings
        )
    return out


def onnx_predict(path: str | Path, space: InputSpace) -> Predict:
    """Raw inputs -> logits through an ONNX Runtime session (normalising as in training)."""
    import numpy as np

    from dlforge.deploy.bench import ort_runner

    run = ort_runner(path, threads=torch.get_num_threads())

    def predict(x: torch.Tensor) -> torch.Tensor:
        z = space.to_model(x.float()).cpu().numpy().astype(np.float32)
        return torch.from_numpy(run(z)).float()

    return predict


def onnx_robustness(path: str | Path, p: Probe, source: nn.Module) -> dict[str, float]:
    """An ONNX model (int8 in ONNX Runtime: no gradients) at ``compare_eps``: transfer from the
    fp32 ``source`` and the black-box Square attack."""
    from dlforge.robust.evaluate import square_inputs

    predict = onnx_predict(path, p.space)
    adv = square_inputs(predict, p.x, p.y, p.compare_eps, p.space, p.settings)
    return {
        "clean_accuracy": accuracy(predict, p.x, p.y),
        "transfer_accuracy": transfer_accuracy(
            p.wrap(source), predict, p.x, p.y, p.compare_eps, p.space, p.settings
        ),
        "square_accuracy": accuracy(predict, adv, p.y),
    }


def build_space(data: DataBundle, bounds: Any = "auto") -> InputSpace:
    """The input space of ``data`` (for adversarial training)."""
    check_continuous(data.train[0], "the training split")
    return input_space(data.preprocessing, data.train[0], bounds)
