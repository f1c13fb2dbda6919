"""Knowledge distillation: soft targets (Hinton et al., 2015) and feature hints (FitNets).

``Distiller(student, teacher)`` is the ``nn.Module`` the Trainer trains: the student and, with
hints, the adapters that map its features to the teacher's. ``DistillationStep`` is the Trainer
step: it runs the frozen teacher on the batch and mixes the hard-label loss with the
temperature-softened KL to the teacher and, if hint layers are named, a feature-matching term::

    distiller = Distiller(student, teacher, temperature=4.0, alpha=0.9)
    Trainer(distiller, cfg, step=DistillationStep(distiller)).fit(loader)
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dlforge.train.step import Step, StepOutput, batch_size_of, split_batch


def soft_target_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)); the T^2 keeps gradient scale independent of T."""
    t = temperature
    return F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits / t, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> torch.Tensor:
    """(1 - alpha) * CE(student, labels) + alpha * T^2 * KL(teacher_T || student_T)."""
    hard = F.cross_entropy(student_logits, targets)
    return (1 - alpha) * hard + alpha * soft_target_loss(
        student_logits, teacher_logits, temperature
    )


def _adapter(student_shape: torch.Size, teacher_shape: torch.Size) -> nn.Module:
    """Maps student features to the teacher's channels: a 1x1 conv, or a linear layer."""
    if len(student_shape) != len(teacher_shape) or student_shape[2:] != teacher_shape[2:]:
        raise ValueError(
            f"hint layers differ in shape beyond channels: student {tuple(student_shape)}, "
            f"teacher {tuple(teacher_shape)}"
        )
    c_s, c_t = student_shape[1], teacher_shape[1]
    if len(student_shape) == 4:
        return nn.Conv2d(c_s, c_t, 1)
    if len(student_shape) == 3:
        return nn.Conv1d(c_s, c_t, 1)
    return nn.Linear(c_s, c_t)


class Distiller(nn.Module):
    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        temperature: float = 4.0,
        alpha: float = 0.9,
        hints: dict[str, str] | None = None,  # student layer -> teacher layer
        hint_weight: float = 1.0,
        example: torch.Tensor | None = None,  # needed with hints, to size the adapters
    ) -> None:
        super().__init__()
        self.student = student
        self.teacher = [teacher.eval()]  # a list keeps it out of parameters() and state_dict()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.temperature, self.alpha, self.hint_weight = temperature, alpha, hint_weight
        self.hints = dict(hints or {})
        self._features: dict[str, torch.Tensor] = {}
        self.adapters = nn.ModuleDict()
        for s_name, t_name in self.hints.items():
            student.get_submodule(s_name).register_forward_hook(self._keep(f"s:{s_name}"))
            teacher.get_submodule(t_name).register_forward_hook(self._keep(f"t:{t_name}"))
        if self.hints:
            if example is None:
                raise ValueError("hint distillation needs an example input to size its adapters")
            with torch.no_grad():
                student.eval()(example)
                teacher(example)
            student.train()
            for i, (s_name, t_name) in enumerate(self.hints.items()):
                s, t = self._features[f"s:{s_name}"], self._features[f"t:{t_name}"]
                self.adapters[str(i)] = _adapter(s.shape, t.shape)

    def _keep(self, key: str) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            self._features[key] = output

        return hook

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.student(x)
        return out

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        teacher = self.teacher[0].to(x.device)
        out: torch.Tensor = teacher(x)
        return out

    def loss(
        self,
        student_logits: torch.Tensor,
        targets: torch.Tensor,
        teacher_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The distillation loss; without teacher logits (validation) plain cross-entropy."""
        if teacher_logits is None:
            return F.cross_entropy(student_logits, targets)
        total = distillation_loss(
            student_logits, teacher_logits.float(), targets, self.temperature, self.alpha
        )
        for i, (s_name, t_name) in enumerate(self.hints.items()):
            # the loss runs outside autocast: bring bf16 features back to fp32 first
            s = self.adapters[str(i)](self._features[f"s:{s_name}"].float())
            total = total + self.hint_weight * F.mse_loss(
                s.float(), self._features[f"t:{t_name}"].float()
            )
        return total


class DistillationStep(Step):
    """The Trainer step for a ``Distiller``: the teacher's logits for the same (augmented)
    batch go straight into the loss, instead of through the model's state."""

    def __init__(self, distiller: Distiller) -> None:
        self.distiller = distiller

    def __call__(self, model: nn.Module, batch: Any, trainer: Any) -> StepOutput:
        x, y = trainer.to_device(split_batch(batch))
        with trainer.precision.autocast():
            logits = model(x)
            teacher = self.distiller.teacher_logits(x) if model.training else None
        loss = self.distiller.loss(logits.float(), y, teacher)
        return StepOutput(loss, logits, y, batch_size_of(x))


def width_scaled(
    model_kwargs: dict[str, Any], name: str, factor: float, depth: int | None = None
) -> dict[str, Any]:
    """Keyword arguments for a smaller copy of a registry model: ``factor`` times the width
    (channels, hidden units, or a transformer's model dimension, kept a multiple of its heads)
    and, for transformers and recurrent models, ``depth`` layers."""
    kwargs = copy.deepcopy(model_kwargs)

    def scale(n: int, step: int = 1) -> int:
        return max(step, step * round(n * factor / step))

    if name == "cnn":
        kwargs["channels"] = [scale(c) for c in kwargs.get("channels", (32, 64))]
    elif name == "mlp":
        kwargs["hidden"] = [scale(h) for h in kwargs.get("hidden", (256, 128))]
    elif name.startswith("resnet"):
        kwargs["width"] = scale(kwargs.get("width", 16))
    elif name in ("transformer", "vit"):
        kwargs["dim"] = scale(kwargs.get("dim", 64), kwargs.get("heads", 4))
    elif name == "rnn":
        kwargs["hidden"] = scale(kwargs.get("hidden", 64))
    else:
        raise ValueError(
            f"no width rule for model '{name}' (cnn, mlp, resnet*, transformer, vit and rnn have "
            "one): leave distill out of compress.techniques, or distil in Python with a student "
            "of your own (dlforge.compress.distill.Distiller)"
        )
    if depth is not None:
        if name not in ("transformer", "vit", "rnn"):
            raise ValueError(f"no depth rule for model '{name}' (transformer, vit, rnn have one)")
        kwargs["depth" if name != "rnn" else "layers"] = depth
    return kwargs
