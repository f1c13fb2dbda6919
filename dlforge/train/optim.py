"""Optimizers with parameter groups that keep weight decay off biases and norm layers."""

from __future__ import annotations

import torch
from torch import nn

from dlforge.train.config import OptimizerConfig

NORM_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LocalResponseNorm,
)


def split_decay(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decay, no_decay): biases and every parameter of a norm layer go to no_decay."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            exempt = isinstance(module, NORM_TYPES) or name.endswith("bias") or p.ndim <= 1
            (no_decay if exempt else decay).append(p)
    return decay, no_decay


def param_groups(model: nn.Module, cfg: OptimizerConfig) -> list[dict]:
    if cfg.decay_bias_and_norm or cfg.weight_decay == 0:
        params = [p for p in model.parameters() if p.requires_grad]
        return [{"params": params, "weight_decay": cfg.weight_decay}]
    decay, no_decay = split_decay(model)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov), Adam (L2 added to the gradient) or AdamW (decoupled decay).

    Adam's ``weight_decay`` is an L2 term that the adaptive step rescales; AdamW decays the
    weights directly (Loshchilov & Hutter, 2019). They are different optimizers, not synonyms.
    """
    groups = param_groups(model, cfg)
    betas = (cfg.betas[0], cfg.betas[1])
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=betas)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas)
