"""A user's own model factory, named in tests as ``userzoo:tiny_net``."""

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn


def tiny_net(input_shape, num_classes, hidden=16):
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


class _Branchy(nn.Module):
    """Data-dependent control flow: trains fine, but torch.fx cannot trace it."""

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        x = x.flatten(1)
        if x.sum() > 0:  # the same either way, but fx cannot know that
            return self.fc(x)
        return self.fc(x)


def branchy(input_shape, num_classes):
    return _Branchy(math.prod(input_shape), num_classes)


class _SqueezeExcite(nn.Module):
    """x * sigmoid(expand(relu(reduce(avgpool(x))))) (Hu et al., 2018)."""

    def __init__(self, channels, bottleneck):
        super().__init__()
        self.reduce = nn.Conv2d(channels, bottleneck, 1)
        self.expand = nn.Conv2d(bottleneck, channels, 1)

    def forward(self, x):
        gate = self.expand(torch.relu(self.reduce(F.adaptive_avg_pool2d(x, 1))))
        return x * torch.sigmoid(gate)


def _conv_bn(c_in, c_out, kernel, stride=1, groups=1):
    return [
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    ]


def dwsep_se(input_shape, num_classes, widths=(16, 32, 64, 128), se_ratio=4):
    """MobileNet-style CNN: a stem conv, then per stage a depthwise 3x3 conv, a
    squeeze-and-excitation block and a pointwise 1x1 conv; global pooling and a linear head."""
    layers = _conv_bn(input_shape[0], widths[0], 3)
    for i, (c_in, c_out) in enumerate(itertools.pairwise(widths)):
        layers += _conv_bn(c_in, c_in, 3, 1 if i == 0 else 2, groups=c_in)
        layers += [_SqueezeExcite(c_in, max(1, c_in // se_ratio))]
        layers += _conv_bn(c_in, c_out, 1)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], num_classes)]
    return nn.Sequential(*layers)
