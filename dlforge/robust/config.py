"""Configuration of robustness testing (the ``robust:`` stage, ``dlforge attack``) and of
adversarial training (``train.adversarial``). No torch here: recipes load instantly.

Budgets are in the input's own units, before normalisation (pixels in [0, 1] for images scaled
from 0-255): see ``dlforge/robust/space.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from dlforge.config import Config, ConfigError, check

AttackName = Literal["fgsm", "pgd", "pgd_l2", "cw", "deepfool", "square"]
ATTACK_NORMS: dict[str, str] = {
    "fgsm": "linf", "pgd": "linf", "square": "linf",
    "pgd_l2": "l2", "cw": "l2", "deepfool": "l2",
}  # fmt: skip

# The default grids, as shares of the input range (hi - lo): up to 0.3, Madry et al.'s MNIST
# budget. The L2 grid is the L2 norm of the L∞ perturbation of the same share on every value.
EPS_SHARES = (0.0, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3)


def _check_bounds(bounds: object) -> None:
    if bounds is None or bounds == "auto":
        return
    values = bounds if isinstance(bounds, list) else []
    numbers = len(values) == 2 and all(
        isinstance(b, int | float) and math.isfinite(b) for b in values
    )
    if not numbers or not values[0] < values[1]:
        raise ConfigError(
            f"must be 'auto', [lo, hi] (finite, lo < hi), or null; got {bounds!r}", "bounds"
        )


@dataclass
class RobustConfig(Config):
    """Robustness testing: accuracy against attack strength per attack, common corruptions,
    gradient-masking sanity checks, clean/adversarial example pairs; with ``compressed`` the
    compress and quantize stages add robustness columns at ``compare_eps``."""

    enabled: bool = False
    attacks: list[AttackName] = field(
        default_factory=lambda: ["fgsm", "pgd", "pgd_l2", "cw", "deepfool", "square"]
    )
    eps: list[float] | None = None  # L∞ budgets in input units; None: EPS_SHARES of the range
    eps_l2: list[float] | None = None  # L2 budgets; None: see EPS_SHARES
    bounds: list[float] | str | None = "auto"  # valid raw range; auto: the training split's
    steps: int = 20  # PGD steps (PGD-20)
    restarts: int = 1  # PGD random restarts
    cw_steps: int = 100  # Carlini-Wagner optimisation steps per binary-search step
    square_queries: int = 1000  # Square attack query budget per sample
    samples: int = 500  # test samples attacked (a seeded stratified-free draw); 0: all
    batch_size: int = 256
    corruptions: bool = True  # Gaussian noise, blur, contrast, shift at five severities
    examples: int = 4  # clean/adversarial pairs in the report
    compare_eps: float | None = None  # the L∞ ε of the compressed variants; None: 0.1 of range
    compressed: bool = True  # robustness columns in the compress and quantize tables

    def validate(self) -> None:
        check(len(self.attacks) > 0, "attacks", self.attacks, "must name at least one attack")
        if len(set(self.attacks)) != len(self.attacks):
            raise ConfigError(f"lists an attack twice: {self.attacks}", "attacks")
        for key in ("eps", "eps_l2"):
            grid = getattr(self, key)
            if grid is not None:
                check(len(grid) > 0 and all(0 <= e < math.inf for e in grid), key, grid,
                      "must be a non-empty list of finite budgets >= 0")  # fmt: skip
                check(list(grid) == sorted(grid), key, grid, "must be in increasing order")
        _check_bounds(self.bounds)
        for key in ("steps", "restarts", "cw_steps", "square_queries", "batch_size"):
            check(getattr(self, key) >= 1, key, getattr(self, key), "must be >= 1")
        check(self.samples >= 0, "samples", self.samples, "must be >= 0 (0: all)")
        check(self.examples >= 0, "examples", self.examples, "must be >= 0")
        check(self.compare_eps is None or 0 < self.compare_eps < math.inf, "compare_eps",
              self.compare_eps, "must be finite and > 0")  # fmt: skip


@dataclass
class AdversarialConfig(Config):
    """Adversarial training (``train.adversarial``): PGD (Madry et al. 2018), TRADES (Zhang et
    al. 2019) or fast FGSM with a random start (Wong et al. 2020), at ``eps`` in input units."""

    method: Literal["pgd", "trades", "fast_fgsm"] | None = None
    eps: float = 0.1
    norm: Literal["linf", "l2"] = "linf"
    steps: int = 7  # PGD / TRADES inner steps (fast FGSM takes one)
    alpha: float | None = None  # step; None: 2.5·eps/steps (PGD, TRADES), 1.25·eps (fast FGSM)
    beta: float = 6.0  # TRADES: weight of the robustness (KL) term
    ramp_epochs: int = 0  # grow eps linearly over the first epochs (helps small nets start)
    # Validation runs on PGD inputs, so the best checkpoint is the most robust epoch ("robust
    # overfitting", Rice et al. 2020: clean validation keeps a less robust one); val_loss and
    # val_accuracy are then plain cross-entropy and accuracy on those inputs.
    select_on: Literal["adversarial", "clean"] = "adversarial"
    bounds: list[float] | str | None = "auto"

    @property
    def enabled(self) -> bool:
        return self.method is not None

    def validate(self) -> None:
        check(0 < self.eps < math.inf, "eps", self.eps, "must be finite and > 0")
        check(self.steps >= 1, "steps", self.steps, "must be >= 1")
        check(self.alpha is None or self.alpha > 0, "alpha", self.alpha, "must be > 0")
        check(self.beta >= 0, "beta", self.beta, "must be >= 0")
        check(self.ramp_epochs >= 0, "ramp_epochs", self.ramp_epochs, "must be >= 0")
        if self.method == "fast_fgsm" and self.norm != "linf":
            raise ConfigError("fast FGSM training is an L∞ method; set norm: linf", "norm")
        _check_bounds(self.bounds)
