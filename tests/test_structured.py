"""Structured pruning: channels removed by surgery, dependent layers shrunk, model still exact."""

from __future__ import annotations

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
    nm_masks,
    prune_channels,
)
from dlforge.deploy.export import export_onnx
from dlforge.models import create_model


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
    from dlforge.deploy.runtime import OrtModel

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
    class DepthwiseSeparable(nn.Module):  # the depthwise conv pins the first conv's channels
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, padding=1)
            self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
            self.pw = nn.Conv2d(16, 64, 1)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.pw(self.dw(torch.relu(self.stem(x))))
            return self.head(torch.flatten(self.pool(x), 1))

    x = torch.randn(1, 3, 16, 16)
    with pytest.warns(UserWarning, match=r"MAC target of 90% cannot be reached.*removes 6\d\.\d%"):
        result = prune_channels(DepthwiseSeparable(), x, ChannelPrune(macs_removed=0.9))
    assert result.pinned["stem"] == "grouped conv dw"
    assert result.macs_removed == pytest.approx(
        1 - count_macs(result.model, x) / result.macs_before
    )
