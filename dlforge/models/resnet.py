"""CIFAR-style ResNets (He et al., 2016, section 4.2): ResNet-20/32/56, 1-D or 2-D.

Three stages of ``n`` BasicBlocks with 16, 32 and 64 channels (times ``width``); depth = 6n + 2.
Where a block changes shape, the shortcut is either "identity" (option A: stride-2 subsample and
zero-pad the new channels, no parameters, as in the paper's CIFAR models) or "projection"
(option B: 1x1 conv + batch norm).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dlforge.config import ConfigError
from dlforge.models.cnn import conv_layers
from dlforge.models.registry import register_model


class PadShortcut(nn.Module):
    """Option A shortcut: subsample by ``stride`` and zero-pad channels to ``c_out``.

    The number of spatial dimensions is fixed at construction (no ``x.dim()`` in forward), so
    the block traces with torch.fx for quantization and pruning. After structured pruning the
    shortcut routes channels explicitly: output ``j`` carries input ``sources[j]``, or zeros
    where that is -1; ``channel_sources``/``rerouted`` let ``dlforge.compress.structured`` rewire
    it when both the block's input and output channels are pruned.
    """

    def __init__(
        self, c_in: int, c_out: int, stride: int, ndim: int, sources: list[int] | None = None
    ) -> None:
        super().__init__()
        if sources is not None and (len(sources) != c_out or min(sources, default=0) < -1):
            raise ValueError(f"PadShortcut: sources must be {c_out} input channels or -1")
        if sources is not None and max(sources, default=-1) >= c_in:
            raise ValueError(f"PadShortcut: a source channel is not below c_in={c_in}")
        self.c_in, self.c_out, self.stride, self.ndim = c_in, c_out, stride, ndim
        self.sources = sources
        # with an extra zero channel appended at c_in, every output is a gather from the input
        self.gather = None if sources is None else [c_in if s < 0 else s for s in sources]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = (slice(None), slice(None)) + (slice(None, None, self.stride),) * self.ndim
        x = x[index]
        # F.pad takes (last-dim pads..., channel pad) from the last dimension backwards.
        if self.gather is None:
            return F.pad(x, [0, 0] * self.ndim + [0, self.c_out - self.c_in])
        return F.pad(x, [0, 0] * self.ndim + [0, 1])[:, self.gather]

    def channel_sources(self) -> torch.Tensor:
        """Per output channel: the input channel it carries, or -1 for a zero channel."""
        if self.sources is not None:
            return torch.tensor(self.sources, dtype=torch.long)
        return torch.cat([torch.arange(self.c_in), torch.full((self.c_out - self.c_in,), -1)])

    def rerouted(self, sources: torch.Tensor, c_in: int) -> PadShortcut:
        """The same shortcut between pruned channel sets: output ``j`` carries ``sources[j]``."""
        return PadShortcut(c_in, len(sources), self.stride, self.ndim, sources.tolist())


class BasicBlock(nn.Module):
    def __init__(self, ndim: int, c_in: int, c_out: int, stride: int, shortcut: str) -> None:
        super().__init__()
        conv, bn, _ = conv_layers(ndim)
        self.conv1 = conv(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = bn(c_out)
        self.conv2 = conv(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = bn(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            if shortcut == "identity":
                self.shortcut = PadShortcut(c_in, c_out, stride, ndim)
            else:
                self.shortcut = nn.Sequential(
                    conv(c_in, c_out, 1, stride=stride, bias=False), bn(c_out)
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet-(6n+2): three stages of n basic blocks, widths w, 2w, 4w, identity (option A)
    or projection (option B) shortcuts, He initialisation."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        depth: int = 20,
        width: int = 16,
        shortcut: str = "identity",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ConfigError(f"resnet depth must be 6n + 2 (20, 32, 56, ...), got {depth}")
        if shortcut not in ("identity", "projection"):
            raise ConfigError(
                f"resnet shortcut must be 'identity' or 'projection', got '{shortcut}'"
            )
        if len(input_shape) not in (2, 3):
            raise ConfigError(f"resnet needs (C, L) or (C, H, W) inputs, got {tuple(input_shape)}")
        ndim = len(input_shape) - 1
        conv, bn, gap = conv_layers(ndim)
        n = (depth - 2) // 6
        self.stem = nn.Sequential(
            conv(input_shape[0], width, 3, padding=1, bias=False), bn(width), nn.ReLU(inplace=True)
        )
        blocks: list[nn.Module] = []
        c_in = width
        for stage, c_out in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(ndim, c_in, c_out, stride, shortcut))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.Sequential(gap(1), nn.Flatten())
        self.fc = nn.Linear(c_in, num_classes)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        # He initialisation for the ReLU convs keeps activation variance constant through depth;
        # the linear head keeps PyTorch's default (no ReLU follows it).
        for m in self.modules():
            if isinstance(m, nn.Conv1d | nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:  # each block starts as the identity (Goyal et al., 2017)
            for m in self.modules():
                if isinstance(m, BasicBlock) and isinstance(m.bn2.weight, torch.Tensor):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.blocks(self.stem(x))))


register_model("resnet")(ResNet)  # any depth 6n + 2: create_model("resnet", ..., depth=110)


for _depth in (20, 32, 56):
    # partial keeps ResNet's signature, so create_model still rejects unknown keyword arguments.
    register_model(f"resnet{_depth}")(functools.partial(ResNet, depth=_depth))
