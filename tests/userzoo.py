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
