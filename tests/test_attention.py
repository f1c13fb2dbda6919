"""Attention variants against PyTorch's own: scaled_dot_product_attention, nn.MultiheadAttention,
nn.TransformerEncoderLayer; and the rewriting of torch attention modules."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlforge.models import attention as att
from dlforge.models.attention import (
    AdditiveAttention,
    AttentionPooling,
    DotProductAttention,
    MultiHeadAttention,
    attention,
    combine_masks,
)
from dlforge.models.convert import UnsupportedLayerError, unpack_attention
from dlforge.models.transformer import Encoder, EncoderLayer

TOL = 1e-6


def qkv(b: int = 2, h: int = 3, lq: int = 5, lk: int = 7, d: int = 8) -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.randn(b, h, lq, d), torch.randn(b, h, lk, d), torch.randn(b, h, lk, d)]


@pytest.mark.parametrize("need_weights", [False, True])
def test_scaled_dot_product_equals_torch_sdpa(need_weights: bool) -> None:
    q, k, v = qkv()
    out, weights = attention(q, k, v, need_weights=need_weights)
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v), atol=TOL)
    if need_weights:
        assert weights is not None
        manual = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), -1)
        assert torch.allclose(weights, manual, atol=TOL)


def test_plain_dot_product_has_no_scaling() -> None:
    q, k, v = qkv()
    out, _ = DotProductAttention(scaled=False)(q, k, v, need_weights=True)
    assert torch.allclose(out, torch.softmax(q @ k.transpose(-2, -1), -1) @ v, atol=TOL)
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v, scale=1.0), atol=TOL)


def test_masks_equal_sdpa_with_its_opposite_boolean_convention() -> None:
    q, k, v = qkv(lq=6, lk=6)
    blocked = torch.rand(6, 6) > 0.7
    blocked.fill_diagonal_(False)  # every query keeps one key
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, 4:] = True
    for explicit in (False, True):
        mask = combine_masks(blocked, pad, True, 6, 6, q.dtype, q.device)
        out, _ = attention(q, k, v, mask, explicit=explicit)
        allowed = ~blocked & ~pad[:, None, None, :] & torch.ones(6, 6, dtype=torch.bool).tril()
        assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v, allowed), atol=TOL)
    causal, _ = attention(q, k, v, combine_masks(None, None, True, 6, 6, q.dtype, q.device))
    assert torch.allclose(causal, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=TOL)


def test_fused_kernel_only_when_weights_are_not_wanted(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = F.scaled_dot_product_attention

    def counting(*args: object, **kw: object) -> torch.Tensor:
        calls.append(1)
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(att.F, "scaled_dot_product_attention", counting)
    mha = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 5, 16)
    fast, none = mha(x)
    assert len(calls) == 1 and none is None
    slow, weights = mha(x, need_weights=True)
    assert len(calls) == 1 and weights is not None
    assert torch.allclose(fast, slow, atol=TOL)


@pytest.mark.parametrize("batch_first", [True, False])
def test_multi_head_equals_nn_multihead_attention(batch_first: bool) -> None:
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    ours = MultiHeadAttention.from_torch(ref).eval()
    x = torch.randn(3, 7, 16) if batch_first else torch.randn(7, 3, 16)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[0, 5:] = True
    causal = torch.ones(7, 7, dtype=torch.bool).triu(1)  # torch's convention: True = blocked
    for kw in (
        {},
        {"key_padding_mask": pad},
        {"attn_mask": causal, "key_padding_mask": pad},
        {"need_weights": False},
        {"average_attn_weights": False},
        {"attn_mask": torch.randn(3 * 4, 7, 7)},  # a float mask per head
    ):
        a, wa = ref(x, x, x, **kw)
        b, wb = ours(x, x, x, **kw)
        assert torch.allclose(a, b, atol=TOL), kw
        assert (wa is None) == (wb is None)
        if wa is not None:
            assert torch.allclose(wa, wb, atol=TOL), kw


def test_cross_attention_with_other_key_and_value_widths() -> None:
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(16, 2, kdim=6, vdim=10, batch_first=True).eval()
    ours = MultiHeadAttention.from_torch(ref).eval()
    q, k, v = torch.randn(2, 3, 16), torch.randn(2, 9, 6), torch.randn(2, 9, 10)
    (a, wa), (b, wb) = ref(q, k, v), ours(q, k, v)
    assert torch.allclose(a, b, atol=TOL) and torch.allclose(wa, wb, atol=TOL)
    assert b.shape == (2, 3, 16) and wb.shape == (2, 3, 9)


def test_heads_split_the_feature_dimension_not_the_sequence() -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(12, 3).eval()
    x = torch.randn(2, 5, 12)
    _, per_head = mha(x, need_weights=True, average_attn_weights=False)
    q, k = mha.q_proj(x), mha.k_proj(x)
    for h in range(3):
        cols = slice(4 * h, 4 * h + 4)  # head h sees features 4h..4h+3 of every position
        expect = torch.softmax(q[..., cols] @ k[..., cols].transpose(1, 2) / 2.0, -1)
        assert torch.allclose(per_head[:, h], expect, atol=TOL)


def test_gated_attention_multiplies_a_sigmoid_gate_before_the_output_projection() -> None:
    torch.manual_seed(0)
    gated = MultiHeadAttention(8, 2, gated=True).eval()
    plain = MultiHeadAttention(8, 2).eval()
    plain.load_state_dict({k: v for k, v in gated.state_dict().items() if "gate" not in k})
    x = torch.randn(2, 4, 8)
    context = F.linear(plain(x)[0] - plain.out_proj.bias, torch.linalg.pinv(plain.out_proj.weight))
    expect = gated.out_proj(context * torch.sigmoid(gated.gate(x)))
    assert torch.allclose(gated(x)[0], expect, atol=1e-5)


def test_additive_attention_is_bahdanau() -> None:
    torch.manual_seed(0)
    add = AdditiveAttention(query_dim=5, key_dim=3, hidden=7)
    q, k, v = torch.randn(2, 4, 5), torch.randn(2, 6, 3), torch.randn(2, 6, 2)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[0, 3:] = True
    out, w = add(q, k, v, pad)
    for b in range(2):
        for i in range(4):
            scores = torch.stack([add.w(torch.tanh(add.w_q(q[b, i]) + add.w_k(k[b, j])))[0]
                                  for j in range(6)])  # fmt: skip
            scores = scores.masked_fill(pad[b], -math.inf)
            assert torch.allclose(w[b, i], torch.softmax(scores, 0), atol=TOL)
    assert torch.all(w[0, :, 3:] == 0)
    assert torch.allclose(out, w @ v, atol=TOL)


@pytest.mark.parametrize("gated", [True, False])
def test_attention_pooling(gated: bool) -> None:
    torch.manual_seed(0)
    pool = AttentionPooling(6, 5, gated=gated)
    pool.keep_weights = True
    h = torch.randn(3, 8, 6)
    pad = torch.zeros(3, 8, dtype=torch.bool)
    pad[2, 5:] = True
    out = pool(h, pad)
    z = torch.tanh(pool.v(h)) * (torch.sigmoid(pool.u(h)) if pool.u is not None else 1)
    a = torch.softmax(pool.w(z).squeeze(-1).masked_fill(pad, -math.inf), 1)
    assert torch.allclose(out, (a[..., None] * h).sum(1), atol=TOL)
    assert pool.last_weights is not None and torch.all(pool.last_weights[2, 5:] == 0)


@pytest.mark.parametrize(("norm_first", "activation"), [(False, "relu"), (True, "gelu")])
def test_encoder_equals_nn_transformer_encoder(norm_first: bool, activation: str) -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, 0.0, activation, batch_first=True,
                                       norm_first=norm_first)  # fmt: skip
    ref = nn.TransformerEncoder(layer, 2, nn.LayerNorm(16), enable_nested_tensor=False).eval()
    ours = Encoder.from_torch(ref).eval()
    x = torch.randn(3, 6, 16)
    pad = torch.zeros(3, 6, dtype=torch.bool)
    pad[1, 4:] = True
    assert torch.allclose(ref(x), ours(x), atol=1e-5)
    assert torch.allclose(ref(x, src_key_padding_mask=pad)[0], ours(x, None, pad)[0], atol=1e-5)
    one = EncoderLayer.from_torch(ref.layers[0]).eval()
    assert torch.allclose(ref.layers[0](x), one(x), atol=1e-5)


def test_pruned_heads_compute_what_the_kept_heads_did() -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(12, 3).eval()
    x = torch.randn(2, 5, 12)
    mha.head_gate = torch.tensor([1.0, 0.0, 1.0])  # head 1 silenced
    silenced = mha(x)[0]
    mha.prune_heads([0, 2])
    assert mha.num_heads == 2 and mha.q_proj.out_features == 8 and mha.out_proj.in_features == 8
    assert torch.allclose(mha(x)[0], silenced, atol=TOL)


def test_unpacking_torch_attention_keeps_outputs_and_refuses_what_it_cannot_rewrite() -> None:
    torch.manual_seed(0)
    model = nn.ModuleDict(
        {
            "ok": nn.MultiheadAttention(8, 2, batch_first=True),
            "biased": nn.MultiheadAttention(8, 2, add_bias_kv=True, batch_first=True),
        }
    ).eval()
    x = torch.randn(2, 3, 8)
    before = model["ok"](x, x, x)[0]
    with pytest.raises(
        UnsupportedLayerError, match=r"biased: nn.MultiheadAttention with add_bias_kv"
    ):
        unpack_attention(model, "int8 quantization")
    result = unpack_attention(model, "int8 quantization", skip_unsupported=True)
    assert result.converted == ["ok"] and list(result.left) == ["biased"]
    assert isinstance(model["ok"], MultiHeadAttention)
    assert isinstance(model["biased"], nn.MultiheadAttention)
    assert torch.allclose(model["ok"](x, x, x)[0], before, atol=TOL)


def test_attention_maps_read_every_kind_of_attention_module() -> None:
    from dlforge.evaluate.attention_maps import attention_maps
    from dlforge.models import create_model

    torch.manual_seed(0)
    vit = create_model("vit", (1, 8, 8), 10, dim=16, depth=2, heads=2).eval()
    x = torch.randn(3, 1, 8, 8)
    maps = attention_maps(vit, x)
    assert list(maps) == ["encoder.layers.0.self_attn", "encoder.layers.1.self_attn"]
    layer = vit.encoder.layers[0]
    tokens = torch.cat([vit.cls_token.expand(3, -1, -1), vit.embed(x).flatten(2).transpose(1, 2)],
                       1) + vit.pos  # fmt: skip
    _, expect = layer.self_attn(layer.norm1(tokens), need_weights=True)
    assert torch.allclose(maps["encoder.layers.0.self_attn"], expect, atol=TOL)
    assert not any(m.keep_weights for m in vit.attention_layers())  # restored
    rnn = create_model("rnn", (1, 20), 3).eval()
    pooled = attention_maps(rnn, torch.randn(2, 1, 20))["pool"]
    assert pooled.shape == (2, 20) and torch.allclose(pooled.sum(1), torch.ones(2))
    mha = nn.MultiheadAttention(4, 2, batch_first=True).eval()
    seq = torch.randn(2, 5, 4)
    assert torch.allclose(attention_maps(_SelfAttend(mha), seq)["attn"], mha(seq, seq, seq)[1])


class _SelfAttend(nn.Module):
    def __init__(self, attn: nn.MultiheadAttention) -> None:
        super().__init__()
        self.attn = attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x)[0]


def test_causal_flag_equals_a_causal_mask_on_both_paths() -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2).eval()
    x = torch.randn(2, 6, 8)
    blocked = torch.ones(6, 6, dtype=torch.bool).triu(1)
    reference = mha(x, attn_mask=blocked)[0]
    assert torch.allclose(mha(x, is_causal=True)[0], reference, atol=TOL)  # fused kernel
    out, w = mha(x, is_causal=True, need_weights=True)  # explicit path
    assert torch.allclose(out, reference, atol=TOL) and torch.all(w.triu(1) == 0)


def test_float_padding_mask_is_added_as_torch_adds_it() -> None:
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    ours = MultiHeadAttention.from_torch(ref).eval()
    q = torch.randn(2, 5, 8)
    soft = torch.zeros(2, 5)
    soft[:, -1] = -2.0  # a soft bias, not a block
    assert torch.allclose(ref(q, q, q, key_padding_mask=soft)[0],
                          ours(q, q, q, key_padding_mask=soft)[0], atol=TOL)  # fmt: skip


def test_a_mask_built_inside_forward_still_quantizes() -> None:
    from dlforge.compress.quantize import ptq

    class Causal(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layer = nn.TransformerEncoderLayer(8, 2, 16, 0.0, batch_first=True)
            self.enc = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
            self.head = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            mask = nn.Transformer.generate_square_subsequent_mask(x.size(1))
            return self.head(self.enc(x, mask=mask).mean(1))

    torch.manual_seed(0)
    model = Causal().eval()
    x = torch.randn(16, 5, 8)
    plan = ptq(model, [x])  # tracing sees combine_masks as one call
    assert torch.allclose(plan.model(x), model(x), atol=0.05)
