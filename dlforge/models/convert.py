"""Rewrite torch's attention modules as dlforge's, with the same weights and outputs.

``nn.MultiheadAttention`` keeps its q/k/v weights packed in one ``in_proj_weight`` and its
forward reads ``out_proj.weight`` directly, so a technique that replaces or reshapes layers
(quantization, low-rank factorisation, structured pruning) cannot reach them, and torch.fx
sees the whole module as one opaque call. ``unpack_attention`` replaces, in place:

- ``nn.MultiheadAttention`` by ``MultiHeadAttention`` (q/k/v/out as separate ``nn.Linear``);
- ``nn.TransformerEncoderLayer`` by ``EncoderLayer``, ``nn.TransformerEncoder`` by ``Encoder``.

Modules it cannot rewrite (decoder layers, ``add_bias_kv``, ``add_zero_attn``) are refused by
name, or left as they are and listed when ``skip_unsupported`` is set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from dlforge.config import DlforgeError
from dlforge.models.attention import MultiHeadAttention, torch_mha_problem
from dlforge.models.transformer import Encoder, EncoderLayer

NOT_REWRITTEN = (nn.TransformerDecoderLayer, nn.TransformerDecoder, nn.Transformer)


class UnsupportedLayerError(DlforgeError, ValueError):
    """A layer a technique cannot handle; the message names the layer and why."""

    def __init__(self, technique: str, problems: dict[str, str]) -> None:
        self.technique, self.problems = technique, problems
        listed = "; ".join(f"{name}: {why}" for name, why in problems.items())
        super().__init__(
            f"{technique} cannot handle {listed} (set skip_unsupported: true to leave "
            "such layers as they are and list them)"
        )


@dataclass
class Unpacked:
    converted: list[str] = field(default_factory=list)  # module names rewritten
    left: dict[str, str] = field(default_factory=dict)  # module name -> why it was left as is


def unpack_attention(
    model: nn.Module, technique: str = "this technique", skip_unsupported: bool = False
) -> Unpacked:
    """Rewrite torch attention modules of ``model`` in place (see the module docstring); a
    refusal leaves the model as it was."""
    check = Unpacked()
    _walk(model, "", check, rewrite=False)
    if check.left and not skip_unsupported:
        raise UnsupportedLayerError(technique, check.left)
    result = Unpacked()
    _walk(model, "", result, rewrite=True)
    return result


def _walk(module: nn.Module, prefix: str, result: Unpacked, rewrite: bool) -> None:
    for name, child in list(module.named_children()):
        path = f"{prefix}{name}"
        new = _rewrite(child, path, result)
        if new is not None:
            result.converted.append(path)
            if not rewrite:
                continue  # what it would become is rewritten whole
            setattr(module, name, new)
            child = new
        if not isinstance(child, NOT_REWRITTEN):
            _walk(child, f"{path}.", result, rewrite)


def _rewrite(child: nn.Module, path: str, result: Unpacked) -> nn.Module | None:
    if isinstance(child, NOT_REWRITTEN):
        result.left[path] = f"{type(child).__name__} is not rewritten (only encoders are)"
        return None
    if isinstance(child, nn.MultiheadAttention):
        problem = torch_mha_problem(child)
        if problem:
            result.left[path] = f"nn.MultiheadAttention with {problem}"
            return None
        return MultiHeadAttention.from_torch(child)
    if isinstance(child, nn.TransformerEncoderLayer):
        problem = torch_mha_problem(child.self_attn)
        if problem:
            result.left[path] = f"its self-attention has {problem}"
            return None
        return EncoderLayer.from_torch(child)
    if isinstance(child, nn.TransformerEncoder):
        bad = [
            f"{path}.layers.{i}"
            for i, m in enumerate(child.layers)
            if torch_mha_problem(m.self_attn)
        ]
        if bad:
            result.left[path] = f"layers {bad} have attention options that are not rewritten"
            return None
        return Encoder.from_torch(child)
    return None
