"""A user's own model factory, named in tests as ``userzoo:tiny_net``."""

import math

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
