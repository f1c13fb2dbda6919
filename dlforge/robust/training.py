"""Adversarial training as a Trainer step: the model learns on attacked inputs.

- ``pgd``: Madry et al. 2018 — minimise the loss on the PGD input within ε (a min-max game).
- ``trades``: Zhang et al. 2019 — clean cross-entropy plus β·KL(f(x) || f(x')) (the reference
  code's direction), x' the input within ε that most changes the prediction: an explicit
  trade-off of clean accuracy for robustness.
- ``fast_fgsm``: Wong et al. 2020 — one FGSM step from a uniform random start, step 1.25·ε;
  the random start is what keeps single-step training from collapsing ("catastrophic
  overfitting") at a fraction of PGD's cost.

The Trainer's batches are normalised; the attack runs in raw units (``space``) so ε means the
same as in ``dlforge attack``. The inner attack runs in fp32 outside autocast and never leaves
a gradient on the parameters; its random draws come from the step's own generator, which goes
into every checkpoint, so a resumed run draws as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from dlforge.robust.attacks import ascent, pgd, project, random_offset
from dlforge.robust.config import AdversarialConfig
from dlforge.robust.space import InputSpace, InRawUnits
from dlforge.train.step import (
    Batch,
    ClassificationStep,
    LossFn,
    StepOutput,
    batch_size_of,
    split_batch,
)

if TYPE_CHECKING:
    from dlforge.train.trainer import Trainer


def _bare(model: nn.Module) -> nn.Module:
    """The module under a DDP wrapper: the inner attack's forward passes must not start a
    gradient reduction that no backward of the parameters will finish."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


class AdversarialStep(ClassificationStep):
    """A classification step whose training batches are attacked first (see module doc).

    Validation batches are attacked with PGD too when ``cfg.select_on`` is "adversarial", so the
    monitored val_loss/val_accuracy (and the best checkpoint) are robust ones.
    """

    def __init__(
        self,
        cfg: AdversarialConfig,
        space: InputSpace,
        loss_fn: LossFn | None = None,
        label_smoothing: float = 0.0,
        augment: Callable[[Any, Any], tuple[Any, Any]] | None = None,
        seed: int = 0,
    ) -> None:
        if cfg.method is None:
            raise ValueError("AdversarialStep needs train.adversarial.method")
        super().__init__(loss_fn, label_smoothing, augment=augment)
        self.cfg = cfg
        self.space = space
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])

    def describe(self, validating: bool) -> dict[str, Any]:
        c = self.cfg
        steps = "1 step" if c.method == "fast_fgsm" else f"{c.steps} steps"
        out = {"adversarial training": f"{c.method}, ε {c.eps:g} ({c.norm}, input units), {steps}"}
        if validating and c.select_on == "adversarial":
            out["validation"] = f"on PGD-{c.steps} inputs at ε {c.eps:g} (val loss and accuracy)"
        return out

    def eps_at(self, epoch: int) -> float:
        """ε, grown linearly over the first ``ramp_epochs`` epochs."""
        ramp = self.cfg.ramp_epochs
        return self.cfg.eps if ramp == 0 else self.cfg.eps * min(1.0, (epoch + 1) / (ramp + 1))

    def _pgd(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        eps: float,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        raw = InRawUnits(model, self.space)
        return pgd(raw, self.space.to_raw(x), y, eps, norm=self.cfg.norm, steps=self.cfg.steps,
                   alpha=self.cfg.alpha, lo=self.space.lo, hi=self.space.hi,
                   generator=generator or self.generator)  # fmt: skip

    def _fast_fgsm(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:  # fmt: skip
        raw, x_raw = InRawUnits(model, self.space), self.space.to_raw(x)
        delta = random_offset(x_raw, eps, "linf", self.generator)
        start = self.space.clip(x_raw + delta).detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(raw(start).float(), y), start)
        alpha = self.cfg.alpha if self.cfg.alpha is not None else 1.25 * eps
        step = (start.detach() - x_raw) + ascent(grad, alpha, "linf")
        return self.space.clip(x_raw + project(step, eps, "linf")).detach()

    def _trades(self, model: nn.Module, x: torch.Tensor, eps: float) -> torch.Tensor:
        """The input within ε that most moves the prediction away from the clean one (KL)."""
        raw, x_raw = InRawUnits(model, self.space), self.space.to_raw(x)
        with torch.no_grad():
            clean = F.softmax(raw(x_raw).float(), 1)
        noise = torch.randn(x_raw.shape, generator=self.generator).to(x_raw.device)
        x_adv = self.space.clip(x_raw + 0.001 * noise)
        alpha = self.cfg.alpha if self.cfg.alpha is not None else 2.5 * eps / self.cfg.steps
        for _ in range(self.cfg.steps):
            x_adv = x_adv.detach().requires_grad_(True)
            kl = F.kl_div(F.log_softmax(raw(x_adv).float(), 1), clean, reduction="sum")
            (grad,) = torch.autograd.grad(kl, x_adv)
            step = ascent(grad, alpha, self.cfg.norm)
            x_adv = self.space.clip(x_raw + project(x_adv.detach() + step - x_raw, eps,
                                                    self.cfg.norm))  # fmt: skip
        return x_adv.detach()

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:  # fmt: skip
        """Adversarial inputs (normalised, as the model takes them) for one training batch."""
        inner = _bare(model)
        method = self.cfg.method
        if method == "fast_fgsm":  # in training mode, as Wong et al.
            return self.space.to_model(self._fast_fgsm(inner, x, y, eps))
        # PGD and TRADES craft in eval mode (the reference code's choice): batch-norm statistics
        # must not learn from the attack's intermediate inputs.
        was_training = inner.training
        inner.eval()
        try:
            adv = self._pgd(inner, x, y, eps) if method == "pgd" else self._trades(inner, x, eps)
        finally:
            inner.train(was_training)
        return self.space.to_model(adv)

    def __call__(self, model: nn.Module, batch: Batch, trainer: Trainer) -> StepOutput:
        x, y = split_batch(batch)
        if not model.training:
            if self.cfg.select_on == "clean":
                return super().__call__(model, batch, trainer)
            x, y = trainer.to_device((x, y))
            # The same random starts every epoch (and none taken from the training draws), so
            # epochs compare on equal terms.
            fixed = torch.Generator().manual_seed(0)
            with torch.enable_grad():  # validation runs under no_grad; PGD needs gradients
                adv = self.space.to_model(self._pgd(_bare(model), x, y, self.cfg.eps, fixed))
            with torch.no_grad(), trainer.precision.autocast():
                logits = model(adv)
            loss = F.cross_entropy(logits.float(), y)
            return StepOutput(loss, logits, y, batch_size_of(x))
        if self.augment is not None:
            x, y = self._augmented(x, y, trainer)
        x, y = trainer.to_device((x, y))
        hard = y if y.dim() == 1 else y.argmax(1)  # the attack's target under mixed labels
        eps = self.eps_at(trainer.epoch)
        adv = self.attack(model, x.float(), hard, eps)
        if self.cfg.method == "trades":
            with trainer.precision.autocast():
                if trainer.runtime.distributed:
                    # One forward through DDP (two would start two gradient reductions); batch
                    # norm then sees the clean and adversarial halves together.
                    logits, logits_adv = model(torch.cat([x, adv])).float().chunk(2)
                else:  # as the reference code: batch statistics of each half apart
                    logits, logits_adv = model(x).float(), model(adv).float()
            robust = F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(logits, 1),
                              reduction="batchmean")  # fmt: skip
            loss = self.loss(trainer, logits, y) + self.cfg.beta * robust
            return StepOutput(loss, logits_adv, y, batch_size_of(x))
        with trainer.precision.autocast():
            logits = model(adv)
        return StepOutput(self.loss(trainer, logits.float(), y), logits, y, batch_size_of(x))
