"""Losses for imbalanced classes: class weights, focal loss, LDAM with deferred re-weighting,
logit adjustment (as a loss and post hoc).

Each loss is an ``nn.Module`` called as ``loss(logits, target)`` (the ``ClassificationStep``'s
``loss_fn``). A loss whose behaviour changes with the epoch (LDAM-DRW) has ``set_epoch``, which
the step calls at every new epoch, so a resumed run continues with the same weights.

References: Cui et al. 2019 (effective number of samples), Lin et al. 2017 (focal loss),
Cao et al. 2019 (LDAM, deferred re-weighting), Menon et al. 2021 (logit adjustment).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dlforge.config import ConfigError
from dlforge.train.config import LossConfig

WeightScheme = Literal["inverse", "inverse_sqrt", "effective"]


def class_counts(
    targets: torch.Tensor | np.ndarray | Sequence[int], num_classes: int
) -> np.ndarray:
    """Samples per class, ``num_classes`` long (a class with no sample counts 0)."""
    y = np.asarray(targets.cpu() if isinstance(targets, torch.Tensor) else targets, dtype=np.int64)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ConfigError(f"class ids must be in 0..{num_classes - 1}; got {y.min()}..{y.max()}")
    return np.bincount(y, minlength=num_classes)


def _check_counts(counts: Sequence[int] | np.ndarray) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 1 or len(c) < 2:
        raise ConfigError(f"class counts must be a list of at least 2 numbers; got {counts!r}")
    if (c <= 0).any():
        empty = [int(i) for i in np.flatnonzero(c <= 0)]
        raise ConfigError(f"classes {empty} have no training samples: no weight can be given")
    return c


def class_weights(
    counts: Sequence[int] | np.ndarray, scheme: WeightScheme = "inverse", beta: float = 0.999
) -> torch.Tensor:
    """Per-class weights from class counts, scaled so that the mean weight over the training
    samples is 1 (with ``inverse`` these equal scikit-learn's
    ``compute_class_weight("balanced")``).

    - ``inverse``: 1 / n_c
    - ``inverse_sqrt``: 1 / sqrt(n_c)
    - ``effective``: (1 - beta) / (1 - beta^n_c), the inverse "effective number" of samples
      (Cui et al. 2019); beta -> 0 gives equal weights, beta -> 1 gives ``inverse``.
    """
    c = _check_counts(counts)
    if scheme == "inverse":
        w = 1.0 / c
    elif scheme == "inverse_sqrt":
        w = 1.0 / np.sqrt(c)
    elif scheme == "effective":
        if not 0 <= beta < 1:
            raise ConfigError(f"beta must be in [0, 1); got {beta}", "beta")
        w = (1.0 - beta) / (1.0 - np.power(beta, c))
    else:
        raise ConfigError(
            f"class weight scheme '{scheme}' is unknown; choose inverse, inverse_sqrt or effective"
        )
    w = w * c.sum() / (w * c).sum()  # the average training sample weighs 1
    return torch.tensor(w, dtype=torch.float32)


class WeightedCrossEntropy(nn.Module):
    """Cross-entropy with per-class weights (a buffer: it follows the model's device)."""

    weight: torch.Tensor

    def __init__(self, weight: torch.Tensor, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("weight", weight.float())
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = self.weight.to(logits.device)
        return F.cross_entropy(logits, target, weight, label_smoothing=self.label_smoothing)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): cross-entropy scaled by (1 - p_t)^gamma, so that easy,
    well-classified samples weigh little.

    Multi-class (logits (N, K), class ids): -alpha_y (1 - p_y)^gamma log p_y, with ``alpha``
    None or per-class weights. Binary (logits (N,) or (N, 1), targets 0/1): the sigmoid form,
    alpha_t (1 - p_t)^gamma BCE, with scalar ``alpha`` weighting positives (alpha) against
    negatives (1 - alpha), as ``torchvision.ops.sigmoid_focal_loss`` computes it.
    """

    alpha: torch.Tensor | None

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | Sequence[float] | torch.Tensor | None = None,
        reduction: Literal["mean", "sum", "none"] = "mean",
    ) -> None:
        super().__init__()
        if gamma < 0:
            raise ConfigError(f"gamma must be >= 0; got {gamma}", "gamma")
        self.gamma = gamma
        self.reduction = reduction
        self.scalar_alpha: float | None = None
        if alpha is None or isinstance(alpha, int | float):
            self.scalar_alpha = None if alpha is None else float(alpha)
            self.register_buffer("alpha", None)
        else:
            self.register_buffer("alpha", torch.as_tensor(alpha, dtype=torch.float32))

    def _reduce(self, loss: torch.Tensor) -> torch.Tensor:
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.ndim == 1 or (logits.ndim == 2 and logits.shape[1] == 1):
            return self._binary(logits.reshape(-1), target.reshape(-1).to(logits.dtype))
        logp = F.log_softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
        loss = -((1 - logp.exp()) ** self.gamma) * logp
        if self.alpha is not None:
            loss = loss * self.alpha.to(logits.device)[target]
        elif self.scalar_alpha is not None:
            loss = loss * self.scalar_alpha
        return self._reduce(loss)

    def _binary(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(logits)
        ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        p_t = p * target + (1 - p) * (1 - target)
        loss = ce * (1 - p_t) ** self.gamma
        if self.scalar_alpha is not None and self.scalar_alpha >= 0:
            loss = (self.scalar_alpha * target + (1 - self.scalar_alpha) * (1 - target)) * loss
        return self._reduce(loss)


class LDAMLoss(nn.Module):
    """Label-distribution-aware margin loss (Cao et al. 2019) with deferred re-weighting.

    The target logit is lowered by a margin m_c proportional to n_c^(-1/4) (the largest
    ``max_margin``), the logits are scaled by ``scale``, then cross-entropy. With ``drw_epoch``
    set, from that epoch on the loss also weighs classes by ``class_weights(counts,
    "effective", beta)`` (DRW): plain margins first, re-weighting once features have formed.
    """

    margins: torch.Tensor
    drw_weight: torch.Tensor
    # Validation uses plain cross-entropy: the re-weighted loss from drw_epoch on is another
    # scale, and a monitored val_loss would never pick a re-weighted epoch as the best.
    validate_plain = True

    def __init__(
        self,
        counts: Sequence[int] | np.ndarray,
        max_margin: float = 0.5,
        scale: float = 30.0,
        drw_epoch: int | None = None,
        beta: float = 0.9999,
    ) -> None:
        super().__init__()
        c = _check_counts(counts)
        margins = 1.0 / np.power(c, 0.25)
        margins = margins * (max_margin / margins.max())
        self.register_buffer("margins", torch.tensor(margins, dtype=torch.float32))
        self.register_buffer("drw_weight", class_weights(c, "effective", beta))
        self.scale = scale
        self.drw_epoch = drw_epoch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def reweighting(self) -> bool:
        return self.drw_epoch is not None and self.epoch >= self.drw_epoch

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        margin = F.one_hot(target, logits.shape[1]).to(logits.dtype)
        margin = margin * self.margins.to(logits.device)[None]
        weight = self.drw_weight.to(logits.device) if self.reweighting else None
        return F.cross_entropy(self.scale * (logits - margin), target, weight)


def log_priors(counts: Sequence[int] | np.ndarray) -> torch.Tensor:
    """log pi_c, the training split's class priors."""
    c = _check_counts(counts)
    return torch.tensor(np.log(c / c.sum()), dtype=torch.float32)


class LogitAdjustedLoss(nn.Module):
    """Logit-adjusted cross-entropy (Menon et al. 2021): cross-entropy of logits + tau log pi,
    so that the model's own logits come out balanced (no adjustment at prediction time)."""

    offset: torch.Tensor

    def __init__(self, counts: Sequence[int] | np.ndarray, tau: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("offset", tau * log_priors(counts))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits + self.offset.to(logits.device), target)


def adjust_logits(
    logits: torch.Tensor | np.ndarray, counts: Sequence[int] | np.ndarray, tau: float = 1.0
) -> torch.Tensor:
    """Post-hoc logit adjustment (Menon et al. 2021) of a model trained with plain
    cross-entropy: logits - tau log pi, which favours the rare classes by their rarity."""
    z = torch.as_tensor(logits, dtype=torch.float32)
    return z - tau * log_priors(counts).to(z.device)


def make_loss(
    cfg: LossConfig, counts: Sequence[int] | np.ndarray, label_smoothing: float = 0.0
) -> nn.Module | None:
    """The loss a recipe's ``train.loss`` names, for these training class counts (None: the
    step's own cross-entropy, with label smoothing)."""
    if cfg.name == "cross_entropy":
        return None
    if cfg.name == "weighted":
        return WeightedCrossEntropy(class_weights(counts, cfg.weights, cfg.beta), label_smoothing)
    if cfg.name == "focal":
        alpha = class_weights(counts, cfg.weights, cfg.beta) if cfg.focal_weights else None
        return FocalLoss(cfg.gamma, alpha)
    if cfg.name == "ldam":
        return LDAMLoss(counts, cfg.max_margin, cfg.scale, cfg.drw_epoch, cfg.beta)
    if cfg.name == "logit_adjusted":
        return LogitAdjustedLoss(counts, cfg.tau)
    raise ConfigError(f"loss '{cfg.name}' is unknown", "name")
