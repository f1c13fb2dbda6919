"""Structured pruning: channels removed by surgery, dependent layers shrunk, model still exact."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlforge.compress.prune import apply_masks
from dlforge.compress.structured import (
    ChannelPrune,
    channel_spaces,
    count_macs,
    head_importance,
    nm_masks,
    prune_channels,
)
from dlforge.deploy.export import export_onnx
from dlforge.models import create_model
from dlforge.models.attention import MultiHeadAttention
from dlforge.models.convert import UnsupportedLayerError


def kill_channels(model: nn.Module, bn_name: str, channels: list[int]) -> None:
    """Make channels exactly dead: BN scale and shift 0 means the channel outputs 0."""
    bn = model.get_submodule(bn_name)
    with torch.no_grad():
        bn.weight[channels] = 0
        bn.bias[channels] = 0


def params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(
    ("shape", "kwargs"),
    [((1, 8, 8), {}), ((1, 40), {"pool": "flatten", "stride": [1, 2], "dropout": 0.2})],
)
def test_removing_dead_channels_is_exact(shape, kwargs) -> None:
    torch.manual_seed(0)
    model = create_model("cnn", shape, 10, channels=[8, 16], **kwargs).eval()
    kill_channels(model, "1", [0, 3, 5, 6])
    kill_channels(model, "4", list(range(8)))
    x = torch.randn(5, *shape)
    result = prune_channels(model, x[:1], ChannelPrune(amount=0.5, criterion="bn_scale"))
    small = result.model
    assert small[0].out_channels == 4 and small[3].in_channels == 4 and small[3].out_channels == 8
    torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-5)
    assert list(result.pinned.values()) == ["feeds the model output"]  # the logits keep all classes


def test_resnet_residual_spaces() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    identity = create_model("resnet20", (3, 16, 16), 10).eval()
    spaces = channel_spaces(identity, x[:1])
    residual = [s for s in spaces.values() if len(s.producers) > 1]
    # option A: one residual space per stage, split at the padding shortcuts, none pinned
    assert [s.channels for s in residual] == [16, 32, 64]
    assert not any(s.pinned for s in residual)
    assert [len(s.routes_in) for s in residual] == [0, 1, 1]
    projection = create_model("resnet20", (3, 16, 16), 10, shortcut="projection").eval()
    merged = [
        s
        for s in channel_spaces(projection, x[:1]).values()
        if len(s.producers) > 1 and not s.pinned
    ]
    assert merged  # both sides of an add (conv2 and the projection) prune together
    result = prune_channels(projection, x[:1], ChannelPrune(amount=0.5))
    assert params(result.model) < 0.5 * params(projection)
    out = result.model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_resnet_option_a_residual_pruning_is_exact(tmp_path) -> None:
    """Dead residual channels are removed in every stage and the padding shortcuts rewired:
    the pruned network computes exactly what the original did."""
    torch.manual_seed(0)
    model = create_model("resnet20", (3, 16, 16), 10).eval()
    with torch.no_grad():  # random BN statistics, so that a wrong routing shows
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    stage1 = [0, 3, 5, 6, 9, 10, 12, 15]
    # stage 2: channels whose shortcut source died in stage 1, and zero-padded ones (>= 16)
    stage2 = [0, 3, 5, 6, *range(16, 28)]
    stage3 = [*stage2, *range(32, 48)]  # dead in stage 2, or zero-padded
    for name in ["stem.1", "blocks.0.bn2", "blocks.1.bn2", "blocks.2.bn2"]:
        kill_channels(model, name, stage1)
    for b in (3, 4, 5):
        kill_channels(model, f"blocks.{b}.bn2", stage2)
    for b in (6, 7, 8):
        kill_channels(model, f"blocks.{b}.bn2", stage3)
    for b in range(9):
        width = model.get_submodule(f"blocks.{b}.bn1").num_features
        kill_channels(model, f"blocks.{b}.bn1", list(range(1, width, 2)))
    x = torch.randn(4, 3, 16, 16)
    result = prune_channels(model, x[:1], ChannelPrune(amount=0.5, criterion="bn_scale"))
    small = result.model
    assert small.blocks[3].shortcut.c_in == 8 and small.blocks[6].shortcut.c_out == 32
    torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-4)
    assert params(small) < 0.3 * params(model)
    # and the rewired shortcut exports: ONNX Runtime agrees with PyTorch
    from dlforge.deploy.backends import OrtModel

    path = export_onnx(small, x[:1], tmp_path / "resnet_small.onnx")
    ort = OrtModel(path, threads=1)
    np.testing.assert_allclose(ort(x.numpy()), small(x).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_pruned_model_exports_and_is_dense(tmp_path) -> None:
    torch.manual_seed(0)
    model = create_model("cnn", (1, 8, 8), 10).eval()
    result = prune_channels(model, torch.randn(1, 1, 8, 8), ChannelPrune(amount=0.5))
    path = export_onnx(result.model, torch.randn(1, 1, 8, 8), tmp_path / "small.onnx")
    conv_weights = [t for t in onnx.load(path).graph.initializer if len(t.dims) == 4]
    assert sorted(t.dims[0] for t in conv_weights) == [16, 32]


def test_two_four_masks() -> None:
    torch.manual_seed(0)
    model = create_model("mlp", (16,), 4, hidden=[8])
    masks = nm_masks(model, 2, 4)
    assert set(masks) == {"1", "3"}
    for name, mask in masks.items():
        groups = mask.reshape(mask.shape[0], -1, 4)
        assert torch.all(groups.sum(-1) == 2)
        w = model.get_submodule(name).weight.detach().abs().reshape(mask.shape[0], -1, 4)
        kept_min = torch.where(groups.bool(), w, torch.inf).amin(-1)
        dropped_max = torch.where(groups.bool(), -torch.inf, w).amax(-1)
        assert torch.all(kept_min >= dropped_max)  # the two largest of every four survive
    apply_masks(model, masks)
    conv = create_model("cnn", (4, 8, 8), 3, channels=[8, 8])
    conv_masks = nm_masks(conv)
    assert "3" in conv_masks and conv_masks["3"].shape == conv[3].weight.shape


def test_network_slimming_penalty_shrinks_bn_scales(digits) -> None:
    from dlforge.train import OptimizerConfig, TrainConfig, Trainer

    scales = {}
    for bn_l1 in (0.0, 1e-1):
        torch.manual_seed(0)
        model = create_model("cnn", digits.input_shape, digits.num_classes, channels=[16, 32])
        cfg = TrainConfig(epochs=3, progress=False, bn_l1=bn_l1, optimizer=OptimizerConfig(lr=3e-3))
        Trainer(model, cfg).fit(digits.loader("train", 64, True, torch.Generator().manual_seed(0)))
        scales[bn_l1] = (
            torch.cat([model[1].weight.detach(), model[4].weight.detach()]).abs().mean().item()
        )
    assert scales[1e-1] < 0.9 * scales[0.0]


def test_count_macs_by_hand() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2, groups=2),
        nn.Flatten(), nn.Linear(4 * 3 * 3, 10),
    )  # fmt: skip
    # conv1: 8x8x8 outputs x 3*9; conv2: 4x3x3 outputs x (8/2)*9; linear: 10 x 36
    expected = 8 * 8 * 8 * 27 + 4 * 3 * 3 * 36 + 10 * 36
    assert count_macs(model, torch.randn(2, 3, 8, 8)) == expected


def test_prune_to_a_share_of_macs_in_blocks_of_channels() -> None:
    torch.manual_seed(0)
    model = create_model("resnet20", (3, 16, 16), 10).eval()
    x = torch.randn(1, 3, 16, 16)
    full = count_macs(model, x)
    exact = prune_channels(model, x, ChannelPrune(macs_removed=0.5))
    assert abs(1 - count_macs(exact.model, x) / full - 0.5) < 0.03
    blocks = prune_channels(model, x, ChannelPrune(macs_removed=0.5, round_to=8))
    assert all(k % 8 == 0 for k in blocks.kept.values())
    assert abs(1 - count_macs(blocks.model, x) / full - 0.5) < 0.1
    with pytest.raises(ValueError, match="macs_removed"):
        prune_channels(model, x, ChannelPrune(macs_removed=1.5))


def test_a_model_with_nothing_to_prune_names_why() -> None:
    class Concat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 4, 3), nn.Conv2d(1, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.a(x), self.b(x)], 1)

    with pytest.raises(ValueError, match=r"Concat can be pruned.*a: used by torch\.cat") as info:
        prune_channels(Concat(), torch.randn(1, 1, 6, 6))
    assert " at 0x" not in str(info.value)  # names the op, never an object's address
    normed = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    with pytest.raises(ValueError, match=r"0: used by module 1 \(LayerNorm\)"):
        prune_channels(normed, torch.randn(1, 4))


def test_user_model_with_a_functional_residual_is_pruned_exactly() -> None:
    class Net(nn.Module):  # a user's own module: functional relu, a residual "+", a head
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.head = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.relu(self.bn1(self.conv1(x)))
            h = F.relu(self.bn2(self.conv2(h)) + h)
            return self.head(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))

    torch.manual_seed(0)
    model = Net().eval()
    for bn in ("bn1", "bn2"):  # one residual space: both sides of the add lose channels 1, 4, 6
        kill_channels(model, bn, [1, 4, 6])
    x = torch.randn(3, 1, 6, 6)
    small = prune_channels(model, x[:1], ChannelPrune(amount=3 / 8, criterion="bn_scale")).model
    assert small.conv1.out_channels == 5 and small.conv2.in_channels == 5
    assert small.head.in_features == 5
    torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-5)


def test_an_unreachable_mac_target_warns_with_the_share_removed() -> None:
    class GroupedSeparable(nn.Module):  # the grouped conv pins the first conv's channels
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, padding=1)
            self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=4)
            self.pw = nn.Conv2d(16, 64, 1)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.pw(self.dw(torch.relu(self.stem(x))))
            return self.head(torch.flatten(self.pool(x), 1))

    x = torch.randn(1, 3, 16, 16)
    with pytest.warns(UserWarning, match=r"MAC target of 90% cannot be reached.*removes 4\d\.\d%"):
        result = prune_channels(GroupedSeparable(), x, ChannelPrune(macs_removed=0.9))
    assert result.pinned["stem"] == "grouped conv dw (groups=4) ties its channels in groups"
    assert result.macs_removed == pytest.approx(
        1 - count_macs(result.model, x) / result.macs_before
    )


# --- attention, depthwise-separable and recurrent models -------------------------------------


@torch.no_grad()
def zero_rows(layer: nn.Module, rows: list[int]) -> None:
    """Output channels that are exactly 0 (weights and bias), and rank last by filter norm."""
    layer.weight[rows] = 0
    if layer.bias is not None:
        layer.bias[rows] = 0


def head_columns(heads: list[int], head_dim: int) -> list[int]:
    return [h * head_dim + i for h in heads for i in range(head_dim)]


@torch.no_grad()
def kill_heads(attn: nn.Module, heads: list[int]) -> None:
    """Heads that write nothing (zero output-projection columns) and have zero q/k/v weights."""
    e, cols = attn.embed_dim, head_columns(heads, attn.head_dim)
    if isinstance(attn, nn.MultiheadAttention):  # packed q/k/v rows
        zero_rows_of = [cols, [e + c for c in cols], [2 * e + c for c in cols]]
        for rows in zero_rows_of:
            attn.in_proj_weight[rows] = 0
            attn.in_proj_bias[rows] = 0
    else:
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            zero_rows(proj, cols)
    attn.out_proj.weight[:, cols] = 0


@torch.no_grad()
def kill_units(rnn: nn.Module, layer: int, units: list[int]) -> None:
    """Hidden units that stay exactly 0: all their gate rows zero (GRU: r = z = 1/2 and n = 0,
    so h = h/2 from 0; LSTM: g = 0, so c and h stay 0)."""
    h = rnn.hidden_size
    gates = getattr(rnn, f"weight_ih_l{layer}").shape[0] // h
    rows = [g * h + u for g in range(gates) for u in units]
    for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        getattr(rnn, f"{kind}_l{layer}")[rows] = 0


class TorchAttention(nn.Module):
    """A user's model with torch's own attention module between two prunable layers."""

    def __init__(self, add_bias_kv: bool = False) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True, add_bias_kv=add_bias_kv)
        self.fc = nn.Linear(32, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x))
        a, _ = self.attn(h, h, h)
        return self.head(torch.relu(self.fc(a.mean(1))))


def test_torch_multihead_attention_is_rewritten_and_pruned_exactly() -> None:
    torch.manual_seed(0)
    model = TorchAttention().eval()
    zero_rows(model.inp, list(range(0, 32, 4)))  # inp -> q/k/v_proj: 8 of 32 dead
    zero_rows(model.attn.out_proj, list(range(1, 32, 4)))  # out_proj -> fc: 8 of 32 dead
    zero_rows(model.fc, [0, 5, 10, 15])
    kill_heads(model.attn, [1, 3])
    x = torch.randn(5, 7, 6)
    result = prune_channels(model, x[:1], ChannelPrune(amount=0.25, heads=0.5))
    small = result.model
    assert isinstance(small.attn, MultiHeadAttention) and small.attn.num_heads == 2
    assert small.inp.out_features == 24 and small.attn.q_proj.in_features == 24
    assert small.attn.k_proj.in_features == small.attn.v_proj.in_features == 24
    assert small.attn.out_proj.out_features == 24 and small.fc.in_features == 24
    assert small.attn.q_proj.out_features == 16  # two heads of 8
    assert result.heads_kept == {"attn": 2} and result.heads_removed == {"attn": 2}
    torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-5)
    assert isinstance(model.attn, nn.MultiheadAttention)  # the caller's model is untouched


def test_torch_attention_that_cannot_be_rewritten_is_refused_or_kept_whole() -> None:
    model, x = TorchAttention(add_bias_kv=True).eval(), torch.randn(1, 7, 6)
    with pytest.raises(UnsupportedLayerError, match=r"structured pruning cannot handle attn: "):
        prune_channels(model, x)
    result = prune_channels(model, x, ChannelPrune(amount=0.25, skip_unsupported=True))
    assert result.pinned["inp"] == "used by module attn (MultiheadAttention)"
    assert result.kept == {"fc": 12}  # after the opaque module, the layers still prune
    assert result.model(x).shape == (1, 3)


def test_torch_transformer_encoder_loses_feed_forward_units_and_heads_exactly() -> None:
    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Linear(6, 32)
            layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
            self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(32, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.enc(self.inp(x)).mean(1))

    torch.manual_seed(0)
    model = Encoder().eval()
    for i, layer in enumerate(model.enc.layers):
        zero_rows(layer.linear1, list(range(i, 64, 4)))  # relu(0) = 0: dead units
        kill_heads(layer.self_attn, [i, i + 2])
    x = torch.randn(4, 9, 6)
    result = prune_channels(model, x[:1], ChannelPrune(amount=0.25, heads=0.5))
    small = result.model
    for layer in small.enc.layers:
        assert layer.linear1.out_features == layer.linear2.in_features == 48
        assert layer.self_attn.num_heads == 2
    # The residual stream (inp, every out_proj and linear2) meets the layer norms: kept whole.
    assert result.pinned["inp"] == "used by module enc.layers.0.norm1 (LayerNorm)"
    assert set(result.kept) == {"enc.layers.0.linear1", "enc.layers.1.linear1"}
    torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-5)


def test_transformer_heads_and_feed_forward_units_with_macs_by_hand() -> None:
    torch.manual_seed(0)
    model = create_model("transformer", (1, 40), 10).eval()  # dim 64, 4 heads, FFN 128, depth 3
    for layer in model.encoder.layers:
        kill_heads(layer.self_attn, [0, 3])
        zero_rows(layer.linear1, list(range(0, 128, 2)))  # gelu(0) = 0
    x = torch.randn(4, 1, 40)
    result = prune_channels(model, x[:1], ChannelPrune(amount=0.5, heads=0.5))
    torch.testing.assert_close(result.model(x), model(x), rtol=1e-5, atol=1e-5)
    attn = result.model.encoder.layers[0].self_attn
    original = model.encoder.layers[0].self_attn
    assert torch.equal(attn.q_proj.weight, original.q_proj.weight[16:48])  # heads 1 and 2 kept
    # 11 tokens (10 patches and the class token) of 64 features; per layer: q/k/v/out
    # projections, the FFN, and the QK^T and AV products (heads x 11 x 11 x head_dim each).
    t, d = 11, 64
    full = 4 * t * d * d + 2 * t * d * 128 + 2 * t * t * d
    half = 3 * t * d * 32 + t * 32 * d + 2 * t * d * 64 + 2 * t * t * 32
    other = 10 * 64 * 4 + 64 * 10  # patch embedding and head
    assert result.macs_before == 3 * full + other == count_macs(model, x)
    assert result.macs_after == 3 * half + other
    assert result.macs_removed == pytest.approx(0.4986, abs=1e-4)


class Attend(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.attn = MultiHeadAttention(16, 4)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(torch.tanh(self.inp(x)))[0].mean(1))


def test_head_importance_is_the_gate_gradient() -> None:
    """Michel et al.: |dL/d gate_h| at gates of 1, per batch, summed; checked by differences."""
    torch.manual_seed(0)
    model = Attend().double().eval()
    batches = [(torch.randn(8, 5, 6, dtype=torch.float64), torch.randint(0, 3, (8,)))
               for _ in range(2)]  # fmt: skip
    importance = head_importance(model, batches)["attn"]
    assert model.attn.head_gate is None  # restored

    def loss(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> float:
        model.attn.head_gate = gate
        try:
            with torch.no_grad():
                return float(F.cross_entropy(model(x), y))
        finally:
            model.attn.head_gate = None

    eps = 1e-6
    for h in range(4):
        step = torch.zeros(4, dtype=torch.float64)
        step[h] = eps
        expected = sum(abs(loss(x, y, 1 + step) - loss(x, y, 1 - step)) / (2 * eps)
                       for x, y in batches)  # fmt: skip
        assert float(importance[h]) == pytest.approx(expected, rel=1e-5)


def test_heads_are_ranked_by_importance_when_data_is_given() -> None:
    torch.manual_seed(0)
    model = Attend().eval()
    with torch.no_grad():  # head 0 has the largest weights but writes nothing
        model.attn.out_proj.weight[:, :4] = 0
        for proj in (model.attn.q_proj, model.attn.k_proj, model.attn.v_proj):
            proj.weight[:4] *= 10
    batches = [(torch.randn(8, 5, 6), torch.randint(0, 3, (8,))) for _ in range(2)]
    x = torch.randn(3, 5, 6)
    cfg = ChannelPrune(amount=0.0, heads=0.25)

    def kept_heads(result) -> list[int]:
        q, q0 = result.model.attn.q_proj.weight, model.attn.q_proj.weight
        return [h for h in range(4) if any(torch.equal(q0[4 * h : 4 * h + 4], q[4 * i : 4 * i + 4])
                                           for i in range(3))]  # fmt: skip

    assert 0 in kept_heads(prune_channels(model, x[:1], cfg))  # by weight norm
    by_gradient = prune_channels(model, x[:1], cfg, data=batches)
    assert 0 not in kept_heads(by_gradient) and by_gradient.heads_removed == {"attn": 1}
    torch.testing.assert_close(by_gradient.model(x), model(x), rtol=1e-5, atol=1e-5)


class SqueezeConv(nn.Module):
    def __init__(self, c: int, r: int) -> None:
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(c, r, 1), nn.Conv2d(r, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.expand(F.relu(self.reduce(F.adaptive_avg_pool2d(x, 1)))))


class SqueezeLinear(nn.Module):  # the common implementation: linear layers, then a view
    def __init__(self, c: int, r: int) -> None:
        super().__init__()
        self.reduce, self.expand = nn.Linear(c, r), nn.Linear(r, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        gate = torch.sigmoid(self.expand(F.relu(self.reduce(x.mean((2, 3))))))
        return x * gate.view(b, c, 1, 1)


class DepthwiseSE(nn.Module):
    def __init__(self, squeeze: type[nn.Module]) -> None:
        super().__init__()
        self.stem, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.dw, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8)
        self.se = squeeze(8, 4)
        self.pw, self.bn3 = nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.stem(x)))
        x = F.relu(self.bn3(self.pw(self.se(F.relu(self.bn2(self.dw(x)))))))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@pytest.mark.parametrize("squeeze", [SqueezeConv, SqueezeLinear])
def test_depthwise_conv_and_squeeze_excitation_are_pruned_exactly(squeeze) -> None:
    torch.manual_seed(0)
    model = DepthwiseSE(squeeze).eval()
    with torch.no_grad():  # random statistics, so that a wrong routing shows
        for bn in (model.bn1, model.bn2, model.bn3):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    dead, dead_out = [1, 5], [0, 3, 9, 12]
    for layer, rows in [(model.stem, dead), (model.dw, dead), (model.se.expand, dead),
                        (model.se.reduce, [2]), (model.pw, dead_out)]:  # fmt: skip
        zero_rows(layer, rows)
    with torch.no_grad():  # a zero input to batch norm stays zero
        for bn, rows in [(model.bn1, dead), (model.bn2, dead), (model.bn3, dead_out)]:
            bn.running_mean[rows] = 0
            bn.bias[rows] = 0
    x = torch.randn(4, 3, 8, 8)
    spaces = channel_spaces(model, x[:1])
    stem = next(s for s in spaces.values() if "stem" in s.producers)
    assert stem.producers == ["stem", "se.expand"]  # the gate and the features it scales
    assert stem.depthwise == ["dw"] and [c for c, _ in stem.consumers] == ["se.reduce", "pw"]
    result = prune_channels(model, x[:1], ChannelPrune(amount=0.25))
    small = result.model
    assert small.stem.out_channels == small.dw.groups == small.dw.in_channels == 6
    assert small.dw.weight.shape == (6, 1, 3, 3) and small.bn2.num_features == 6
    assert result.kept == {"stem": 6, "se.reduce": 3, "pw": 12}
    torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-5)


def test_mobilenet_style_model_reaches_half_the_macs() -> None:
    """Depthwise-separable convs with squeeze-and-excitation: every width but the logits
    prunes (the old analysis pinned each depthwise conv and each gate and removed 22%)."""
    torch.manual_seed(0)
    model = create_model("userzoo:dwsep_se", (3, 32, 32), 10).eval()
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the target is met: no warning
        result = prune_channels(model, x[:1], ChannelPrune(macs_removed=0.5))
    assert result.macs_removed >= 0.4
    assert list(result.pinned.values()) == ["feeds the model output"]
    assert result.model(x).shape == (2, 10)


def test_gru_with_attention_pooling_loses_dead_units_exactly() -> None:
    torch.manual_seed(0)
    model = create_model("rnn", (1, 40), 10).eval()  # GRU(1 -> 64), gated attention pooling
    kill_units(model.rnn, 0, list(range(0, 64, 8)))
    for layer in (model.pool.v, model.pool.u):  # tanh(v h) * sigmoid(u h): one space
        zero_rows(layer, list(range(3, 64, 8)))
    x = torch.randn(3, 1, 40)
    result = prune_channels(model, x[:1], ChannelPrune(amount=0.125))
    small = result.model
    assert small.rnn.hidden_size == 56 and small.rnn.weight_hh_l0.shape == (3 * 56, 56)
    assert small.pool.v.in_features == small.pool.u.in_features == small.head.in_features == 56
    assert small.pool.v.out_features == small.pool.w.in_features == 56
    torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-5)

    # 40 steps of 3 gates x hidden x (input + hidden); then v, u and w at every step, the head
    def macs(h: int) -> int:
        return 40 * 3 * h * (1 + h) + 40 * (2 * h * h + h) + h * 10

    assert (result.macs_before, result.macs_after) == (macs(64), macs(56))


def test_stacked_lstm_loses_dead_units_of_every_layer_exactly(tmp_path) -> None:
    torch.manual_seed(0)
    model = create_model("rnn", (1, 40), 10, cell="lstm", pooling="last", layers=2).eval()
    kill_units(model.rnn, 0, list(range(0, 64, 8)))  # inner layer: its own dead units
    kill_units(model.rnn, 1, list(range(5, 64, 8)))  # last layer: the space's units
    x = torch.randn(3, 1, 40)
    result = prune_channels(model, x[:1], ChannelPrune(amount=0.125))
    rnn = result.model.rnn
    assert rnn.hidden_size == 56 and rnn.weight_ih_l1.shape == (4 * 56, 56)
    assert rnn.weight_ih_l0.shape == (4 * 56, 1) and rnn.bias_hh_l1.shape == (4 * 56,)
    torch.testing.assert_close(result.model(x), model(x), rtol=1e-5, atol=1e-5)
    assert result.macs_removed > 0.2
    from dlforge.deploy.backends import OrtModel  # the smaller LSTM exports and runs the same

    ort = OrtModel(export_onnx(result.model, x[:1], tmp_path / "lstm.onnx"), threads=1)
    np.testing.assert_allclose(ort(x.numpy()), model(x).detach().numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cell", [nn.GRU, nn.LSTM])
def test_final_state_of_the_last_layer_is_followed(cell) -> None:
    class LastState(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = cell(3, 16, num_layers=2, batch_first=True)
            self.fc = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            state = self.rnn(x)[1]
            h = state[0] if isinstance(self.rnn, nn.LSTM) else state  # LSTM: (h_n, c_n)
            return self.fc(torch.tanh(h[-1]))

    torch.manual_seed(0)
    model = LastState().eval()
    kill_units(model.rnn, 0, [2, 7, 9, 14])
    kill_units(model.rnn, 1, [0, 1, 2, 3])
    x = torch.randn(3, 6, 3)
    result = prune_channels(model, x[:1], ChannelPrune(amount=0.25))
    assert result.model.rnn.hidden_size == 12 and result.model.fc.in_features == 12
    torch.testing.assert_close(result.model(x), model(x), rtol=1e-5, atol=1e-5)


def test_recurrent_layers_that_cannot_be_pruned_say_why() -> None:
    class Recurrent(nn.Module):
        def __init__(self, bidirectional: bool) -> None:
            super().__init__()
            self.rnn = nn.GRU(3, 8, 2, batch_first=True, bidirectional=bidirectional)
            self.fc = nn.Linear(16 if bidirectional else 8, 2)
            self.bidirectional = bidirectional

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, h = self.rnn(x)
            return self.fc(out[:, -1] if self.bidirectional else h.mean(0))  # h: every layer

    x = torch.randn(1, 5, 3)
    with pytest.raises(ValueError, match=r"rnn: bidirectional GRU rnn \(its two directions"):
        prune_channels(Recurrent(True), x)
    with pytest.raises(ValueError, match=r"rnn: used by method \.mean\(\)"):
        prune_channels(Recurrent(False), x)


def test_channels_are_followed_on_their_own_axis() -> None:
    class ConvThenLinear(nn.Module):  # a linear layer over a conv1d's time steps
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc, self.head = nn.Conv1d(2, 8, 3), nn.Linear(10, 5), nn.Linear(5, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.fc(self.conv(x))).mean(1))  # fc's features: dim 2

    result = prune_channels(ConvThenLinear(), torch.randn(1, 2, 12), ChannelPrune(amount=0.4))
    assert result.pinned["conv"] == "fc reads dim 2, the channels are on dim 1"
    assert result.kept == {"fc": 3} and result.model.head.in_features == 3
    flat = nn.Sequential(nn.Conv1d(2, 8, 3), nn.Linear(10, 5), nn.Flatten(), nn.Linear(40, 3))
    with pytest.raises(ValueError, match=r"1: reshaped across its channels by module 2 \(Flat"):
        prune_channels(flat, torch.randn(1, 2, 12))  # (B, 8, 5) -> 40: 5 is the inner index

    class LinearThenConv(nn.Module):  # features on the last dim, moved to dim 1 for a conv
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.conv, self.head = nn.Linear(4, 8), nn.Conv1d(8, 6, 3), nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.fc(x)).transpose(1, 2)
            return self.head(torch.relu(self.conv(h)).mean(2))

    torch.manual_seed(0)
    model = LinearThenConv().eval()
    zero_rows(model.fc, [1, 6])
    zero_rows(model.conv, [1, 4])  # 6 - round(1.5) = 4 kept
    x = torch.randn(3, 9, 4)
    small = prune_channels(model, x[:1], ChannelPrune(amount=0.25)).model
    assert small.fc.out_features == small.conv.in_channels == 6 and small.conv.out_channels == 4
    torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-5)
