"""Transformer encoders built from ``models/attention.py``, and two registered classifiers.

``EncoderLayer`` computes what ``nn.TransformerEncoderLayer`` computes, with the same parameter
names except that the packed ``in_proj_weight`` is three ``nn.Linear`` layers; ``Encoder`` is
``nn.TransformerEncoder``. Written out this way, every weight is a plain layer that pruning,
factorisation and quantization can reach, and the whole model traces with torch.fx.

- ``transformer``: a sequence classifier; a 1-D signal ``(C, L)`` is cut into patches of
  ``patch`` samples, each patch a token (MNIST-1D as a sequence of patches).
- ``vit``: a small Vision Transformer (Dosovitskiy et al., 2021) for ``(C, H, W)`` images.
Both add learned position embeddings and a class token, and read the class token's output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dlforge.config import ConfigError
from dlforge.models.attention import MultiHeadAttention
from dlforge.models.registry import register_model

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"relu": F.relu, "gelu": F.gelu}


class EncoderLayer(nn.Module):
    """Self-attention and a feed-forward block, each with a residual connection and layer norm
    (after each block, or before it with ``norm_first``), as ``nn.TransformerEncoderLayer``."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str | Callable[[torch.Tensor], torch.Tensor] = "relu",
        layer_norm_eps: float = 1e-5,
        batch_first: bool = True,
        norm_first: bool = False,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, nhead, dropout, bias, batch_first=batch_first)
        self.linear1 = nn.Linear(d_model, dim_feedforward, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=bias)
        self.norm_first = norm_first
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = ACTIVATIONS[activation] if isinstance(activation, str) else activation

    def forward(
        self,
        src: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        src_key_padding_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        x = src
        if self.norm_first:
            x = x + self._sa(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            return x + self._ff(self.norm2(x))
        x = self.norm1(x + self._sa(x, src_mask, src_key_padding_mask, is_causal))
        return self.norm2(x + self._ff(x))

    def _sa(
        self, x: torch.Tensor, mask: torch.Tensor | None, pad: torch.Tensor | None, causal: bool
    ) -> torch.Tensor:
        out, _ = self.self_attn(x, x, x, key_padding_mask=pad, attn_mask=mask,
                                need_weights=False, is_causal=causal)  # fmt: skip
        return self.dropout1(out)

    def _ff(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    @classmethod
    @torch.no_grad()
    def from_torch(cls, layer: nn.TransformerEncoderLayer) -> EncoderLayer:
        """The same layer as ``layer``: same weights, same outputs."""
        attn = layer.self_attn
        new = cls(attn.embed_dim, attn.num_heads, layer.linear1.out_features, layer.dropout.p,
                  layer.activation, layer.norm1.eps, attn.batch_first, layer.norm_first,
                  layer.linear1.bias is not None)  # fmt: skip
        new.self_attn = MultiHeadAttention.from_torch(attn)
        new.self_attn.default_need_weights = False
        for name in ("linear1", "linear2", "norm1", "norm2"):
            getattr(new, name).load_state_dict(getattr(layer, name).state_dict())
        return new.to(layer.linear1.weight.device).train(layer.training)


class Encoder(nn.Module):
    """A stack of encoder layers and an optional final norm, as ``nn.TransformerEncoder``."""

    def __init__(self, layers: Sequence[nn.Module], norm: nn.Module | None = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm

    def forward(
        self,
        src: torch.Tensor,
        mask: torch.Tensor | None = None,
        src_key_padding_mask: torch.Tensor | None = None,
        is_causal: bool | None = None,
    ) -> torch.Tensor:
        x = src
        for layer in self.layers:
            x = layer(x, mask, src_key_padding_mask, bool(is_causal))
        return self.norm(x) if self.norm is not None else x

    @classmethod
    def from_torch(cls, encoder: nn.TransformerEncoder) -> Encoder:
        layers = [
            EncoderLayer.from_torch(m) if isinstance(m, nn.TransformerEncoderLayer) else m
            for m in encoder.layers
        ]
        return cls(layers, encoder.norm)


class TokenClassifier(nn.Module):
    """Tokens from ``embed`` (batch, tokens, dim), a class token and position embeddings, an
    encoder, and a linear head on the class token's output."""

    def __init__(
        self,
        embed: nn.Module,
        tokens: int,
        num_classes: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        dropout: float,
    ) -> None:
        super().__init__()
        self.embed = embed
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        layers = [
            EncoderLayer(dim, heads, int(dim * mlp_ratio), dropout, "gelu", norm_first=True)
            for _ in range(depth)
        ]
        self.encoder = Encoder(layers, nn.LayerNorm(dim))
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x)  # (batch, dim, tokens...) -> (batch, tokens, dim)
        t = t.flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
        return self.head(self.encoder(t)[:, 0])

    def attention_layers(self) -> list[MultiHeadAttention]:
        return [m for m in self.modules() if isinstance(m, MultiHeadAttention)]


def _check(name: str, dim: int, heads: int) -> None:
    if dim % heads:
        raise ConfigError(f"{name}: dim {dim} must divide into {heads} heads")


@register_model("transformer")
def transformer(
    input_shape: Sequence[int],
    num_classes: int,
    patch: int = 4,
    dim: int = 64,
    depth: int = 3,
    heads: int = 4,
    mlp_ratio: float = 2.0,
    dropout: float = 0.0,
) -> nn.Module:
    """Transformer encoder over a 1-D signal cut into patches of ``patch`` samples (pre-norm)."""
    if len(input_shape) != 2:
        raise ConfigError(f"transformer needs (C, L) inputs, got shape {tuple(input_shape)}")
    _check("transformer", dim, heads)
    channels, length = input_shape
    if length % patch:
        raise ConfigError(f"transformer: length {length} is not a multiple of patch {patch}")
    embed = nn.Conv1d(channels, dim, patch, stride=patch)
    return TokenClassifier(embed, length // patch, num_classes, dim, depth, heads, mlp_ratio,
                           dropout)  # fmt: skip


@register_model("vit")
def vit(
    input_shape: Sequence[int],
    num_classes: int,
    patch: int = 2,
    dim: int = 64,
    depth: int = 3,
    heads: int = 4,
    mlp_ratio: float = 2.0,
    dropout: float = 0.0,
) -> nn.Module:
    """A small Vision Transformer: ``patch`` x ``patch`` patches as tokens (pre-norm)."""
    if len(input_shape) != 3:
        raise ConfigError(f"vit needs (C, H, W) inputs, got shape {tuple(input_shape)}")
    _check("vit", dim, heads)
    c, h, w = input_shape
    if h % patch or w % patch:
        raise ConfigError(f"vit: image {h}x{w} does not divide into {patch}x{patch} patches")
    embed = nn.Conv2d(c, dim, patch, stride=patch)
    tokens = (h // patch) * (w // patch)
    return TokenClassifier(embed, tokens, num_classes, dim, depth, heads, mlp_ratio, dropout)
