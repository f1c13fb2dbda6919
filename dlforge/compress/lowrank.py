"""Low-rank factorisation: truncated SVD for linear layers, Tucker-2 for convolutions.

Linear: W (out x in) ~ U_r S_r V_r^T becomes Linear(in -> r) then Linear(r -> out); by the
Eckart-Young theorem this is the best rank-r approximation in Frobenius norm.
Conv (Tucker-2, Kim et al., 2016): the kernel K (out, in, k...) is compressed along its two
channel modes: a 1x1 conv in -> r_in, a core conv r_in -> r_out with the original kernel size,
stride and padding, and a 1x1 conv r_out -> out carrying the bias. Factors come from HOSVD,
refined by a few HOOI sweeps.

Ranks are chosen per layer either by the share of spectral energy kept (sum of squared singular
values) or so that the factorised layer keeps a target fraction of the parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from dlforge.config import Config, check


@dataclass
class LowRankConfig(Config):
    mode: Literal["ratio", "energy"] = "ratio"
    ratio: float = 0.5  # ratio mode: factorised params / original params, per layer
    energy: float = 0.9  # energy mode: share of squared singular values kept
    layers: list[str] | None = None  # default: every linear and (grouped-free) conv layer
    hooi_iterations: int = 5
    # Leave layers that cannot be factorised (see compress/checks.py) as they are, listed in
    # the result, instead of refusing the model.
    skip_unsupported: bool = False

    def validate(self) -> None:
        check(0 < self.ratio < 1, "ratio", self.ratio, "must be in (0, 1)")
        check(0 < self.energy <= 1, "energy", self.energy, "must be in (0, 1]")
        check(self.hooi_iterations >= 0, "hooi_iterations", self.hooi_iterations, "must be >= 0")


@dataclass
class LowRankResult:
    model: nn.Module
    ranks: dict[str, tuple[int, ...]] = field(default_factory=dict)
    params_before: dict[str, int] = field(default_factory=dict)
    params_after: dict[str, int] = field(default_factory=dict)
    left: dict[str, str] = field(default_factory=dict)  # layers left as they were, and why


def _rank_for_energy(s: torch.Tensor, energy: float) -> int:
    cumulative = torch.cumsum(s**2, 0) / (s**2).sum()
    return (
        int(torch.searchsorted(cumulative, torch.tensor(energy, dtype=cumulative.dtype)).item()) + 1
    )


def factorize_linear(layer: nn.Linear, rank: int) -> nn.Sequential:
    w = layer.weight.detach().double()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:rank].sqrt()
    first = nn.Linear(layer.in_features, rank, bias=False)
    second = nn.Linear(rank, layer.out_features, bias=layer.bias is not None)
    with torch.no_grad():
        first.weight.copy_((root[:, None] * vh[:rank]).float())
        second.weight.copy_((u[:, :rank] * root[None, :]).float())
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    return nn.Sequential(first, second)


def _unfold(t: torch.Tensor, mode: int) -> torch.Tensor:
    return t.movedim(mode, 0).reshape(t.shape[mode], -1)


def tucker2(
    kernel: torch.Tensor, r_out: int, r_in: int, iterations: int = 5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Factors U_out (out x r_out), U_in (in x r_in) and core (r_out, r_in, k...) of a kernel."""
    k = kernel.double()
    u_out = torch.linalg.svd(_unfold(k, 0), full_matrices=False)[0][:, :r_out]
    u_in = torch.linalg.svd(_unfold(k, 1), full_matrices=False)[0][:, :r_in]
    for _ in range(iterations):  # HOOI: refine each factor with the other fixed
        y = torch.einsum("oi...,ir->or...", k, u_in)
        u_out = torch.linalg.svd(_unfold(y, 0), full_matrices=False)[0][:, :r_out]
        y = torch.einsum("oi...,or->ri...", k, u_out)
        u_in = torch.linalg.svd(_unfold(y, 1), full_matrices=False)[0][:, :r_in]
    core = torch.einsum("oi...,or,is->rs...", k, u_out, u_in)
    return u_out, u_in, core


def factorize_conv(
    layer: nn.Conv1d | nn.Conv2d, r_out: int, r_in: int, iterations: int = 5
) -> nn.Sequential:
    if layer.groups != 1:
        raise ValueError(
            f"Tucker-2 needs an ungrouped convolution; this one has groups={layer.groups}"
        )
    conv = type(layer)
    u_out, u_in, core = tucker2(layer.weight.detach(), r_out, r_in, iterations)
    spatial = (1,) * (layer.weight.dim() - 2)
    first = conv(layer.in_channels, r_in, 1, bias=False)
    # Any: torch types these size tuples per dimension, which a 1-D/2-D helper cannot name.
    geometry: dict[str, Any] = {
        "kernel_size": layer.kernel_size,
        "stride": layer.stride,
        "padding": layer.padding,
        "dilation": layer.dilation,
        "padding_mode": layer.padding_mode,
    }
    middle = conv(r_in, r_out, bias=False, **geometry)
    last = conv(r_out, layer.out_channels, 1, bias=layer.bias is not None)
    with torch.no_grad():
        first.weight.copy_(u_in.T.reshape(r_in, layer.in_channels, *spatial).float())
        middle.weight.copy_(core.float())
        last.weight.copy_(u_out.reshape(layer.out_channels, r_out, *spatial).float())
        if layer.bias is not None and last.bias is not None:
            last.bias.copy_(layer.bias)
    return nn.Sequential(first, middle, last)


def _linear_rank(layer: nn.Linear, cfg: LowRankConfig) -> int:
    full = min(layer.in_features, layer.out_features)
    if cfg.mode == "energy":
        s = torch.linalg.svdvals(layer.weight.detach().double())
        return min(_rank_for_energy(s, cfg.energy), full)
    budget = cfg.ratio * layer.in_features * layer.out_features
    return max(1, min(full, int(budget // (layer.in_features + layer.out_features))))


def _conv_ranks(layer: nn.Conv1d | nn.Conv2d, cfg: LowRankConfig) -> tuple[int, int]:
    c_out, c_in = layer.out_channels, layer.in_channels
    if cfg.mode == "energy":
        w = layer.weight.detach().double()
        r_out = _rank_for_energy(torch.linalg.svdvals(_unfold(w, 0)), cfg.energy)
        r_in = _rank_for_energy(torch.linalg.svdvals(_unfold(w, 1)), cfg.energy)
        return min(r_out, c_out), min(r_in, c_in)
    # Same fraction of both channel counts, the largest whose parameter count fits:
    # c_in * r_in (1x1) + r_in * r_out * k (core) + r_out * c_out (1x1).
    k = layer.weight[0, 0].numel()
    target = cfg.ratio * c_out * c_in * k
    for step in range(100, 0, -1):
        r_out, r_in = max(1, round(step / 100 * c_out)), max(1, round(step / 100 * c_in))
        if c_in * r_in + r_in * r_out * k + r_out * c_out <= target:
            return r_out, r_in
    return 1, 1


def params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def factorize(
    model: nn.Module, cfg: LowRankConfig | None = None, example: Any = None
) -> LowRankResult:
    """Replace chosen linear/conv layers in place; a layer whose factorisation would not be
    smaller is left as it is (and not listed).

    torch's attention modules are first rewritten with separate q/k/v/out layers
    (``models/convert.py``), so their projections are factorised too. With ``example``, layers
    the forward pass never calls are found first (their parent reads the weight directly) and
    refused, or left and listed with ``skip_unsupported``. Recurrent layers are not factorised
    (listed in ``left``).
    """
    from dlforge.compress.checks import uncalled_layers
    from dlforge.models.convert import UnsupportedLayerError, unpack_attention

    cfg = cfg or LowRankConfig()
    result = LowRankResult(model)
    result.left.update(unpack_attention(model, "low-rank factorisation", cfg.skip_unsupported).left)
    types = (nn.Linear, nn.Conv1d, nn.Conv2d)
    candidates = {n: m for n, m in model.named_modules() if isinstance(m, types)}
    if example is not None:
        problems = uncalled_layers(model, example, types)
        if cfg.layers is not None:
            problems = {k: v for k, v in problems.items() if k in cfg.layers}
        if problems and not cfg.skip_unsupported:
            raise UnsupportedLayerError("low-rank factorisation", problems)
        result.left.update(problems)
    for name, m in model.named_modules():
        if isinstance(m, nn.RNNBase):
            result.left[name] = "recurrent weights are not factorised (Linear and conv only)"
    if cfg.layers is not None:
        unknown = sorted(set(cfg.layers) - set(candidates))
        if unknown:
            raise ValueError(f"lowrank: no linear/conv layer named {unknown}")
        candidates = {n: candidates[n] for n in cfg.layers}
    inside_left = tuple(f"{name}." for name in result.left)  # a kept module reads its layers
    candidates = {
        n: m
        for n, m in candidates.items()
        if n not in result.left and not n.startswith(inside_left)
    }
    for name, layer in candidates.items():
        if isinstance(layer, nn.Linear):
            rank = _linear_rank(layer, cfg)
            new: nn.Module = factorize_linear(layer, rank)
            ranks: tuple[int, ...] = (rank,)
        else:
            if layer.groups != 1 or (layer.weight[0, 0].numel() == 1 and cfg.layers is None):
                continue  # grouped or 1x1 convs: nothing to gain by default
            r_out, r_in = _conv_ranks(layer, cfg)
            new = factorize_conv(layer, r_out, r_in, cfg.hooi_iterations)
            ranks = (r_out, r_in)
        if params(new) >= params(layer):
            continue
        result.params_before[name], result.params_after[name] = params(layer), params(new)
        result.ranks[name] = ranks
        model.set_submodule(name, new)
    return result
