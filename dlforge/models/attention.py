"""Attention, written out: dot-product, scaled dot-product, additive, multi-head, gated.

Conventions (those of PyTorch, so the modules drop in for ``nn.MultiheadAttention``):
- sequences are ``(batch, length, features)``; multi-head attention splits the *feature*
  dimension into ``num_heads`` slices of ``head_dim`` (each head sees the whole sequence);
- ``attn_mask`` is boolean with True where a query may *not* attend (``nn.MultiheadAttention``'s
  convention; ``scaled_dot_product_attention`` uses the opposite one), or a float mask added to
  the scores; ``key_padding_mask`` is ``(batch, source_length)`` with True at padding;
- ``is_causal`` lets query ``i`` see keys ``<= i`` only.

Scaling the scores by ``1/sqrt(head_dim)`` keeps their variance near 1 whatever the width, so
the softmax is not pushed into saturation where its gradients vanish (Vaswani et al., 2017).

Without attention weights requested, the scaled path runs
``torch.nn.functional.scaled_dot_product_attention`` (fused kernels); with weights it computes
``softmax(QK^T)V`` explicitly. ``explicit = True`` on a module forces the explicit path: the
quantizer sets it so that both matrix products appear as MatMuls that ONNX Runtime runs in int8.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def combine_masks(
    attn_mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    is_causal: bool,
    q_len: int,
    k_len: int,
    dtype: torch.dtype,
    device: torch.device,
    heads: int | None = None,
) -> torch.Tensor | None:
    """One additive float mask (0 where allowed, -inf where not), broadcastable to the scores
    ``(batch, heads, q_len, k_len)``; None when nothing is masked. Boolean masks block where
    True; float masks are added as they are (as ``nn.MultiheadAttention`` does). A 3-D
    ``attn_mask`` is per head, ``(batch * heads, q_len, k_len)``, and needs ``heads``.

    Registered with ``torch.fx.wrap``: a traced model records it as one call, so masks built
    inside a model's forward (whose dtype and rank tracing cannot know) still trace.
    """
    mask: torch.Tensor | None = None

    def add(m: torch.Tensor) -> None:
        nonlocal mask
        mask = m if mask is None else mask + m

    if attn_mask is not None:
        if attn_mask.dim() == 3 and heads is not None:
            attn_mask = attn_mask.reshape(-1, heads, *attn_mask.shape[1:])
        if attn_mask.dtype == torch.bool:
            add(torch.zeros_like(attn_mask, dtype=dtype).masked_fill(attn_mask, -math.inf))
        else:
            add(attn_mask.to(dtype))
    if key_padding_mask is not None:
        if key_padding_mask.dtype == torch.bool:
            pad = key_padding_mask[:, None, None, :]
            add(torch.zeros_like(pad, dtype=dtype).masked_fill(pad, -math.inf))
        else:
            add(key_padding_mask.to(dtype)[:, None, None, :])
    if is_causal:
        future = torch.ones(q_len, k_len, dtype=torch.bool, device=device).triu(1)
        add(torch.zeros(q_len, k_len, dtype=dtype, device=device).masked_fill(future, -math.inf))
    return mask


torch.fx.wrap("combine_masks")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
    need_weights: bool = False,
    dropout_p: float = 0.0,
    explicit: bool = False,
    is_causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``softmax(q k^T * scale + mask) v`` over the last two dims; returns (output, weights).

    ``scale=None`` is ``1/sqrt(d)`` (scaled dot-product); ``scale=1.0`` is plain dot-product
    attention. ``mask`` is an additive float mask (see ``combine_masks``); ``is_causal`` (with
    no ``mask``) lets the fused kernel skip the future instead of adding a mask. The fused
    kernel is used unless weights are wanted or ``explicit`` is set.
    """
    d = q.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    if not need_weights and not explicit:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                             is_causal=is_causal and mask is None,
                                             scale=scale)  # fmt: skip
        return out, None
    if is_causal and mask is None:
        mask = combine_masks(None, None, True, q.shape[-2], k.shape[-2], q.dtype, q.device)
    scores = torch.matmul(q * scale, k.transpose(-2, -1))
    if mask is not None:
        scores = scores + mask
    weights = torch.softmax(scores, dim=-1)
    if dropout_p > 0:
        weights = F.dropout(weights, dropout_p)
    return torch.matmul(weights, v), weights


class DotProductAttention(nn.Module):
    """Attention without parameters: ``scaled=True`` divides the scores by ``sqrt(d)``."""

    def __init__(self, scaled: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.scaled, self.dropout = scaled, dropout

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        mask = combine_masks(attn_mask, key_padding_mask, is_causal, query.shape[-2],
                             key.shape[-2], query.dtype, query.device)  # fmt: skip
        if mask is not None and key_padding_mask is not None and query.dim() == 3:
            mask = mask.squeeze(1)  # (batch, 1, 1, k) -> (batch, 1, k) for 3-D inputs
        p = self.dropout if self.training else 0.0
        return attention(query, key, value, mask, None if self.scaled else 1.0, need_weights, p)


class AdditiveAttention(nn.Module):
    """Bahdanau et al. (2015): score(q, k) = w^T tanh(W_q q + W_k k); the weights are a softmax
    over the keys. Works with queries and keys of different widths."""

    def __init__(self, query_dim: int, key_dim: int, hidden: int) -> None:
        super().__init__()
        self.w_q = nn.Linear(query_dim, hidden, bias=False)
        self.w_k = nn.Linear(key_dim, hidden, bias=True)
        self.w = nn.Linear(hidden, 1, bias=False)

    def forward(
        self,
        query: torch.Tensor,  # (batch, q_len, query_dim)
        key: torch.Tensor,  # (batch, k_len, key_dim)
        value: torch.Tensor,  # (batch, k_len, value_dim)
        key_padding_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # (batch, q_len, 1, hidden) + (batch, 1, k_len, hidden) -> scores (batch, q_len, k_len)
        scores = self.w(torch.tanh(self.w_q(query)[:, :, None] + self.w_k(key)[:, None])).squeeze(
            -1
        )
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, :].to(torch.bool), -math.inf)
        weights = torch.softmax(scores, dim=-1)
        return torch.matmul(weights, value), weights


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate q/k/v/out projections (each a plain ``nn.Linear``, so
    pruning, low-rank factorisation and quantization see every weight).

    ``forward`` takes the arguments of ``nn.MultiheadAttention`` (``batch_first`` as given) and
    returns ``(output, weights)``; ``key``/``value`` default to ``query`` (self-attention).
    ``gated=True`` multiplies the attention output by a learned sigmoid gate computed from the
    query, per feature, before the output projection (gated attention). ``need_weights``'s
    default is a constructor argument: ``False`` runs the fused kernel, ``True`` is
    ``nn.MultiheadAttention``'s behaviour.

    ``head_gate`` (None, or a tensor of one value per head) scales each head's output; head
    importance (Michel et al., 2019) is the gradient of the loss with respect to it.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = True,
        gated: bool = False,
        need_weights: bool = False,
        head_dim: int | None = None,
    ) -> None:
        super().__init__()
        if head_dim is None:
            if embed_dim % num_heads:
                raise ValueError(f"embed_dim {embed_dim} does not split into {num_heads} heads")
            head_dim = embed_dim // num_heads
        inner = head_dim * num_heads  # equals embed_dim until heads are pruned
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.dropout, self.batch_first, self.default_need_weights = (
            dropout,
            batch_first,
            need_weights,
        )
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.k_proj = nn.Linear(kdim or embed_dim, inner, bias=bias)
        self.v_proj = nn.Linear(vdim or embed_dim, inner, bias=bias)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)
        self.gate = nn.Linear(embed_dim, inner) if gated else None
        self.head_gate: torch.Tensor | None = None
        self.explicit = False  # set by the quantizer: explicit MatMuls instead of the fused kernel
        # For plots: keep the head-averaged weights of the last call, whatever the caller asked.
        self.keep_weights = False
        self.last_weights: torch.Tensor | None = None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n = x.shape[0], x.shape[1]
        return x.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool | None = None,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        key = query if key is None else key
        value = key if value is None else value
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        need = self.default_need_weights if need_weights is None else need_weights
        q, k, v = (
            self._heads(self.q_proj(query)),
            self._heads(self.k_proj(key)),
            self._heads(self.v_proj(value)),
        )
        mask = None
        if attn_mask is not None or key_padding_mask is not None:  # causality joins the mask
            mask = combine_masks(attn_mask, key_padding_mask, is_causal, query.shape[1],
                                 key.shape[1], q.dtype, q.device, self.num_heads)  # fmt: skip
        p = self.dropout if self.training else 0.0
        causal = is_causal and mask is None
        wanted = need or self.keep_weights
        out, weights = attention(q, k, v, mask, None, wanted, p, self.explicit, causal)
        if self.keep_weights and weights is not None:
            self.last_weights = weights.mean(1).detach()
        if self.head_gate is not None:
            out = out * self.head_gate[None, :, None, None]
        b, n = query.shape[0], query.shape[1]
        out = out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)
        if self.gate is not None:
            out = out * torch.sigmoid(self.gate(query))
        out = self.out_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        if weights is not None and average_attn_weights:
            weights = weights.mean(1)
        return out, weights if need else None

    @torch.no_grad()
    def prune_heads(self, keep: list[int] | torch.Tensor) -> None:
        """Keep only the heads in ``keep``: their rows of q/k/v (and the gate), their columns of
        the output projection. The module computes exactly what the kept heads did."""
        keep = torch.as_tensor(keep, dtype=torch.long).sort().values
        if keep.numel() == 0:
            raise ValueError("prune_heads: at least one head must be kept")
        idx = (keep[:, None] * self.head_dim + torch.arange(self.head_dim)).flatten()
        for proj in [self.q_proj, self.k_proj, self.v_proj, self.gate]:
            if proj is not None:
                _take_rows(proj, idx)
        self.out_proj.weight = nn.Parameter(self.out_proj.weight[:, idx].clone())
        self.out_proj.in_features = len(idx)
        if self.head_gate is not None:
            self.head_gate = self.head_gate[keep].clone()
        self.num_heads = len(keep)

    @classmethod
    @torch.no_grad()
    def from_torch(cls, mha: nn.MultiheadAttention) -> MultiHeadAttention:
        """The same attention as ``mha`` (same weights and outputs, ``need_weights`` defaulting
        to True as there), with its packed ``in_proj_weight`` split into q/k/v layers."""
        problem = torch_mha_problem(mha)
        if problem:
            raise ValueError(problem)
        new = cls(mha.embed_dim, mha.num_heads, mha.dropout, mha.in_proj_bias is not None,
                  mha.kdim, mha.vdim, mha.batch_first, need_weights=True)  # fmt: skip
        e = mha.embed_dim
        if mha._qkv_same_embed_dim:
            weights = mha.in_proj_weight.split(e)
        else:
            weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
        biases = mha.in_proj_bias.split(e) if mha.in_proj_bias is not None else (None,) * 3
        for proj, w, b in zip((new.q_proj, new.k_proj, new.v_proj), weights, biases):
            proj.weight.copy_(w)
            if b is not None:
                proj.bias.copy_(b)
        new.out_proj.weight.copy_(mha.out_proj.weight)
        if mha.out_proj.bias is not None:
            new.out_proj.bias.copy_(mha.out_proj.bias)
        return new.to(mha.out_proj.weight.device).train(mha.training)


def torch_mha_problem(mha: nn.MultiheadAttention) -> str | None:
    """Why ``mha`` cannot be rewritten as ``MultiHeadAttention`` (None when it can)."""
    if mha.bias_k is not None or mha.bias_v is not None:
        return "add_bias_kv=True (learned key/value biases appended to the sequence)"
    if mha.add_zero_attn:
        return "add_zero_attn=True (a zero key/value appended to the sequence)"
    return None


def _take_rows(layer: nn.Linear, idx: torch.Tensor) -> None:
    layer.weight = nn.Parameter(layer.weight[idx].clone())
    if layer.bias is not None:
        layer.bias = nn.Parameter(layer.bias[idx].clone())
    layer.out_features = len(idx)


class AttentionPooling(nn.Module):
    """Pools a set or sequence ``(batch, length, dim)`` into one vector ``(batch, dim)``.

    ``gated=False``: a = softmax(w^T tanh(V h)); ``gated=True``: gated-attention pooling (Ilse
    et al., 2018), a = softmax(w^T (tanh(V h) * sigmoid(U h))). The weights are kept in
    ``last_weights`` when ``keep_weights`` is set (for plotting)."""

    def __init__(self, dim: int, hidden: int = 64, gated: bool = True) -> None:
        super().__init__()
        self.v = nn.Linear(dim, hidden)
        self.u = nn.Linear(dim, hidden) if gated else None
        self.w = nn.Linear(hidden, 1)
        self.keep_weights = False
        self.last_weights: torch.Tensor | None = None

    def forward(
        self, h: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        z = torch.tanh(self.v(h))
        if self.u is not None:
            z = z * torch.sigmoid(self.u(h))
        scores = self.w(z)  # (batch, length, 1)
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[..., None].to(torch.bool), -math.inf)
        a = torch.softmax(scores, dim=1)
        if self.keep_weights:
            self.last_weights = a.squeeze(-1).detach()
        return (a * h).sum(1)
