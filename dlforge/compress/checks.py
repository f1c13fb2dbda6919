"""Up-front checks: which layers a technique cannot handle, found before any training is spent.

A technique that replaces a layer by another module (a factorised pair, a quantized wrapper, a
pruned copy) relies on the parent *calling* that layer. A parent that reads ``layer.weight``
itself (as ``nn.MultiheadAttention`` does with ``out_proj``) would run with the old weight, or
crash on the replacement. ``uncalled_layers`` finds such layers with one forward pass.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def uncalled_layers(
    model: nn.Module, example: Any, types: tuple[type[nn.Module], ...]
) -> dict[str, str]:
    """Layers of ``types`` that one forward pass on ``example`` never calls, with why."""
    called: set[str] = set()
    names = {m: n for n, m in model.named_modules() if isinstance(m, types)}
    hooks = [m.register_forward_pre_hook(lambda mod, _args: called.add(names[mod])) for m in names]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    problems = {}
    for name in names.values():
        if name not in called:
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            problems[name] = (
                f"never called in the forward pass: its parent ({type(parent).__name__}) reads "
                "its weight directly or does not use it, so a replacement would be ignored"
            )
    return problems
