"""A plain convolutional net; 1-D for (C, L) inputs and 2-D for (C, H, W)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from dlforge.config import ConfigError
from dlforge.models.registry import register_model


def conv_layers(ndim: int) -> tuple[type[nn.Module], type[nn.Module], type[nn.Module]]:
    """Conv, BatchNorm and adaptive average-pool classes for 1 or 2 spatial dimensions."""
    if ndim == 1:
        return nn.Conv1d, nn.BatchNorm1d, nn.AdaptiveAvgPool1d
    if ndim == 2:
        return nn.Conv2d, nn.BatchNorm2d, nn.AdaptiveAvgPool2d
    raise ConfigError(
        f"convolutional models need (C, L) or (C, H, W) inputs, got {ndim} spatial dims"
    )


@register_model("cnn")
def cnn(
    input_shape: Sequence[int],
    num_classes: int,
    channels: Sequence[int] = (32, 64),
    kernel_size: int = 3,
    stride: Sequence[int] | None = None,
    batch_norm: bool = True,
    dropout: float = 0.0,
    pool: str = "avg",
    spatial_dropout: float = 0.0,
) -> nn.Module:
    """Conv → (BN) → ReLU blocks, then global pooling and a linear head.

    ``dropout`` drops features before the head; ``spatial_dropout`` drops whole channels after
    each block (Tompson et al., 2015: neighbouring activations are correlated, so dropping
    single ones regularises convolutions little).

    ``stride`` gives each block's stride (default 1 for the first block, 2 after), so the
    receptive field grows without a separate pooling layer. ``pool`` is "avg" or "flatten";
    "flatten" keeps position information, which helps on short 1-D signals such as MNIST-1D.
    """
    if len(input_shape) < 2:
        raise ConfigError(f"cnn needs (C, L) or (C, H, W) inputs, got shape {tuple(input_shape)}")
    conv, bn, gap = conv_layers(len(input_shape) - 1)
    drop = nn.Dropout2d if len(input_shape) == 3 else nn.Dropout1d
    strides = list(stride) if stride is not None else [1] + [2] * (len(channels) - 1)
    if len(strides) != len(channels):
        raise ConfigError(f"cnn: {len(strides)} strides for {len(channels)} conv blocks")
    layers: list[nn.Module] = []
    c_in = input_shape[0]
    for c_out, s in zip(channels, strides):
        layers.append(
            conv(c_in, c_out, kernel_size, stride=s, padding=kernel_size // 2, bias=not batch_norm)
        )
        if batch_norm:
            layers.append(bn(c_out))
        layers.append(nn.ReLU(inplace=True))
        if spatial_dropout > 0:
            layers.append(drop(spatial_dropout))
        c_in = c_out
    if pool == "avg":
        layers += [gap(1), nn.Flatten()]
        width = c_in
    elif pool == "flatten":
        size = list(input_shape[1:])
        pad = kernel_size // 2
        for s in strides:  # the usual conv output-length formula, per spatial dim
            size = [(n + 2 * pad - kernel_size) // s + 1 for n in size]
        layers.append(nn.Flatten())
        width = c_in
        for n in size:
            width *= n
    else:
        raise ConfigError(f"cnn: pool must be 'avg' or 'flatten', got '{pool}'")
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
