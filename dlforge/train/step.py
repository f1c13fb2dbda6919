"""Steps: what one batch means to the Trainer. ``step(model, batch, trainer) -> StepOutput``.

The Trainer owns the loop (device moves, precision, backward, accumulation, clipping, the
optimizer); a step owns the objective. ``ClassificationStep`` is plain supervised training;
distillation, mixup/cutmix, adversarial and contrastive objectives are other steps beside it.
A step that keeps state (a random generator, a queue) returns it from ``state_dict`` and it goes
into every checkpoint, so a resume stays exact.

Batches may be ``(inputs, targets)`` tuples or mappings with ``input``/``x`` and
``target``/``y``/``label`` keys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from dlforge.train.trainer import Trainer

Batch = Any  # a (inputs, targets) sequence or a mapping
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

INPUT_KEYS = ("input", "inputs", "x")
TARGET_KEYS = ("target", "targets", "y", "label", "labels")


@dataclass
class StepOutput:
    """What a step hands back to the loop for one batch."""

    loss: torch.Tensor  # the scalar backward() runs on; callbacks may add penalties to it
    logits: torch.Tensor | None = None  # (N, K), for the running accuracy
    target: torch.Tensor | None = None  # (N,) class ids or (N, K) soft targets
    size: int = 0  # samples in the batch


def split_batch(batch: Batch) -> tuple[Any, Any]:
    """``(inputs, targets)`` from a tuple/list batch or a mapping batch."""
    if isinstance(batch, Mapping):
        x = next((batch[k] for k in INPUT_KEYS if k in batch), None)
        y = next((batch[k] for k in TARGET_KEYS if k in batch), None)
        if x is None or y is None:
            raise KeyError(
                f"a mapping batch needs an input key {INPUT_KEYS} and a target key "
                f"{TARGET_KEYS}; got {sorted(batch)}"
            )
        return x, y
    if isinstance(batch, list | tuple) and len(batch) == 2:
        return batch[0], batch[1]
    raise TypeError(f"a batch must be (inputs, targets) or a mapping, got {type(batch).__name__}")


def batch_size_of(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return len(x)
    if isinstance(x, Mapping):
        return batch_size_of(next(iter(x.values())))
    if isinstance(x, list | tuple):
        return batch_size_of(x[0])
    raise TypeError(f"cannot tell the batch size of {type(x).__name__}")


class Step:
    """The base step: override ``__call__``; ``state_dict`` for state a resume needs."""

    def __call__(self, model: nn.Module, batch: Batch, trainer: Trainer) -> StepOutput:
        """``model`` is in train mode while training (wrapped in DDP when distributed) and in
        eval mode for validation; ``trainer`` gives the device, precision and epoch."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state

    def describe(self, validating: bool) -> dict[str, Any]:
        """What the run's settings table should say about this step (e.g. that validation,
        when ``validating``, runs on attacked inputs); nothing for plain steps."""
        del validating
        return {}


class ClassificationStep(Step):
    """``loss_fn(model(x), y)``: cross-entropy by default (hard or soft targets), optionally
    with label smoothing and class weights; the loss itself is computed in fp32.

    ``augment(x, y) -> (x, y)`` transforms training batches only (never validation ones); an
    object with ``set_epoch`` (``dlforge.data.augment.BatchAugment``) is told each new epoch so
    that its draws are seeded by epoch and batch.
    """

    def __init__(
        self,
        loss_fn: LossFn | None = None,
        label_smoothing: float = 0.0,
        class_weights: torch.Tensor | None = None,
        augment: Callable[[Any, Any], tuple[Any, Any]] | None = None,
    ) -> None:
        self.loss_fn = loss_fn
        self.label_smoothing = label_smoothing
        self.class_weights = class_weights
        self.augment = augment
        self._epoch = -1
        self._default: nn.CrossEntropyLoss | None = None

    def _augmented(self, x: Any, y: Any, trainer: Trainer) -> tuple[Any, Any]:
        assert self.augment is not None
        set_epoch = getattr(self.augment, "set_epoch", None)
        if callable(set_epoch) and self._epoch != trainer.epoch:
            # Processes of a distributed run draw differently: the rank joins the seed.
            set_epoch(trainer.epoch, trainer.runtime.rank)
            self._epoch = trainer.epoch
        return self.augment(x, y)

    def loss(self, trainer: Trainer, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.loss_fn is not None:
            set_epoch = getattr(self.loss_fn, "set_epoch", None)
            if callable(set_epoch):  # a loss that changes with the epoch (LDAM's re-weighting)
                set_epoch(trainer.epoch)
            return self.loss_fn(logits, y)
        if self._default is None:
            weight = (
                self.class_weights.to(trainer.device) if self.class_weights is not None else None
            )
            self._default = nn.CrossEntropyLoss(weight=weight, label_smoothing=self.label_smoothing)
        return self._default(logits, y)

    def __call__(self, model: nn.Module, batch: Batch, trainer: Trainer) -> StepOutput:
        x, y = split_batch(batch)
        if self.augment is not None and model.training:
            x, y = self._augmented(x, y, trainer)
        x, y = trainer.to_device((x, y))
        with trainer.precision.autocast():
            logits = model(x)
        if not model.training and getattr(self.loss_fn, "validate_plain", False):
            loss = nn.functional.cross_entropy(logits.float(), y)  # comparable across epochs
            return StepOutput(loss, logits, y, batch_size_of(x))
        return StepOutput(self.loss(trainer, logits.float(), y), logits, y, batch_size_of(x))
