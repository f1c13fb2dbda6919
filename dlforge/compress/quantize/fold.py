"""Batch-norm folding: y = BN(conv(x)) becomes one conv with rescaled weights and a new bias.

In eval mode BN is the per-channel affine map gamma * (z - mean) / sqrt(var + eps) + beta, so
it can be absorbed into the preceding conv/linear: W' = W * a, b' = (b - mean) * a + beta with
a = gamma / sqrt(var + eps). Integer kernels then run one op instead of two, and the weights are
quantized as they will be used.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)
FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


class QuantizationError(ValueError):
    """A model or layer that the quantizer cannot handle; the message names it."""


def trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types for data-dependent control flow
        raise QuantizationError(
            f"cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {exc}); "
            "models with data-dependent Python control flow must be made traceable first"
        ) from None


@torch.no_grad()
def fold_into(layer: nn.Module, bn: nn.Module) -> None:
    assert isinstance(bn, BN_TYPES) and isinstance(layer, FOLDABLE)
    assert bn.running_var is not None and bn.running_mean is not None
    gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_var)
    a = gamma / torch.sqrt(bn.running_var + bn.eps)
    shape = [-1] + [1] * (layer.weight.dim() - 1)
    layer.weight.mul_(a.reshape(shape))
    bias = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
    layer.bias = nn.Parameter((bias - bn.running_mean) * a + beta)


def fold_batch_norm(model: nn.Module) -> tuple[fx.GraphModule, list[str]]:
    """An eval-mode copy of ``model`` with each BN that directly follows a conv/linear folded
    into it; returns the traced module and the names of the folded BN layers."""
    gm = trace(copy.deepcopy(model).eval())
    modules = dict(gm.named_modules())
    folded: list[str] = []
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], BN_TYPES):
            continue
        prev = node.args[0]
        if (
            isinstance(prev, fx.Node)
            and prev.op == "call_module"
            and isinstance(modules[prev.target], FOLDABLE)
            and len(prev.users) == 1  # the raw conv output is used by the BN alone
        ):
            fold_into(modules[prev.target], modules[node.target])
            node.replace_all_uses_with(prev)
            gm.graph.erase_node(node)
            folded.append(str(node.target))
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm, folded
