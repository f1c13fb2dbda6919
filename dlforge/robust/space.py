"""The input space an attack works in: the data's own units, before normalisation.

A perturbation budget means something only in the units a person reads the input in: "ε = 0.1"
is a tenth of the pixel range of an image in [0, 1], whatever per-channel statistics the model
was trained behind. dlforge's data bundles hold normalised tensors, so an attack takes them back
to raw units (``to_raw``), perturbs and clips there, and runs the model behind ``InRawUnits``,
which normalises on the way in. Budgets and corruption strengths then compare across models
trained with different statistics, and the result matches libraries that attack [0, 1] images
(torchattacks) step for step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dlforge.config import DlforgeError

Bounds = Sequence[float] | None | str  # [lo, hi], None (unbounded) or "auto"


class NotAttackableError(DlforgeError, ValueError):
    """The model or its input cannot be attacked with gradients or small perturbations."""


@dataclass(frozen=True)
class InputSpace:
    """Per-channel normalisation (``mean``, ``std``; None: the model takes raw inputs) and the
    valid range ``[lo, hi]`` of a raw input (None: unbounded)."""

    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None
    lo: float | None = None
    hi: float | None = None

    @property
    def range(self) -> float | None:
        return None if self.lo is None or self.hi is None else self.hi - self.lo

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.mean is not None and self.std is not None
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (self.mean.to(x.device, x.dtype).reshape(shape),
                self.std.to(x.device, x.dtype).reshape(shape))  # fmt: skip

    def to_raw(self, x: torch.Tensor) -> torch.Tensor:
        """A model-ready (normalised) tensor in raw units."""
        if self.mean is None:
            return x
        mean, std = self._stats(x)
        return x * std + mean

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        """A raw tensor normalised as the model was trained."""
        if self.mean is None:
            return x
        mean, std = self._stats(x)
        return (x - mean) / std

    def clip(self, x: torch.Tensor) -> torch.Tensor:
        if self.lo is None and self.hi is None:
            return x
        return x.clamp(self.lo, self.hi)

    def describe(self) -> dict[str, Any]:
        return {"lo": self.lo, "hi": self.hi, "normalised": self.mean is not None}


def input_space(
    preprocessing: dict[str, Any], x_train: torch.Tensor | None = None, bounds: Bounds = "auto"
) -> InputSpace:
    """The space of a run's data: its stored normalisation and ``bounds``.

    ``"auto"`` takes the range the training split spans in raw units (``x_train`` is the
    normalised training split): exactly [0, 1] for images scaled from 0-255 or 0-16 that use
    the full range, and the observed range of a signal. A list gives ``[lo, hi]``; None leaves
    inputs unbounded.
    """
    stats = preprocessing.get("normalize")
    mean = std = None
    if stats:
        mean = torch.as_tensor(stats["mean"], dtype=torch.float32).flatten()
        std = torch.as_tensor(stats["std"], dtype=torch.float32).flatten()
    space = InputSpace(mean, std)
    if bounds is None:
        return space
    if isinstance(bounds, str):
        if bounds != "auto":
            raise DlforgeError(f"bounds must be 'auto', [lo, hi] or null, got {bounds!r}")
        if x_train is None:
            raise DlforgeError("bounds 'auto' needs the training split to read the range from")
        check_continuous(x_train, "the training split")
        raw = space.to_raw(x_train.float())
        lo, hi = float(raw.min()), float(raw.max())
        # Statistics round-trip in float32: snap values within 1e-5 of a whole number to it.
        lo, hi = (round(v) if abs(v - round(v)) < 1e-5 else v for v in (lo, hi))
    else:
        if len(bounds) != 2 or not bounds[0] < bounds[1]:
            raise DlforgeError(f"bounds must be [lo, hi] with lo < hi, got {list(bounds)}")
        lo, hi = float(bounds[0]), float(bounds[1])
    return InputSpace(mean, std, float(lo), float(hi))


def check_continuous(x: Any, where: str) -> None:
    """Refuse inputs a small perturbation has no meaning for (token ids, mappings)."""
    if not isinstance(x, torch.Tensor):
        raise NotAttackableError(
            f"{where}: attacks perturb a float tensor input; got {type(x).__name__}"
        )
    if not x.dtype.is_floating_point:
        raise NotAttackableError(
            f"{where}: the input is {x.dtype} (token ids or categories); a perturbation of an "
            "integer id has no meaning, so gradient and score attacks do not apply"
        )


class InRawUnits(nn.Module):
    """``model`` taking raw inputs: normalises them as it was trained, then runs it."""

    def __init__(self, model: nn.Module, space: InputSpace) -> None:
        super().__init__()
        self.model = model
        self.space = space

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(self.space.to_model(x))
        return out
