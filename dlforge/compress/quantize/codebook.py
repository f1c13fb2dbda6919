"""Weight sharing with a k-means codebook per layer (Han et al., "Deep Compression", 2016).

Each layer's weights are clustered into 2^b centroids (1-D k-means, linear initialisation over
[min, max], which the paper found best at keeping the rare large weights). The layer then stores
b-bit indices plus a small float codebook. During fine-tuning the weight is ``centroids[codes]``,
so autograd gives each centroid the sum of the gradients of the weights that share it, exactly
the paper's centroid update.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dlforge.config import Config, check

SHAREABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


def kmeans_1d(
    values: torch.Tensor, k: int, iterations: int = 50
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's algorithm in one dimension; returns (centroids (k,), codes like ``values``)."""
    flat = values.detach().flatten().double()
    lo, hi = flat.min(), flat.max()
    centroids = torch.linspace(lo.item(), hi.item(), k, dtype=torch.float64)
    codes = torch.zeros_like(flat, dtype=torch.long)
    for _ in range(iterations):
        # Sorted centroids: the nearest one is found by bucketing on the midpoints.
        centroids, _ = torch.sort(centroids)
        codes = torch.bucketize(flat, (centroids[1:] + centroids[:-1]) / 2)
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, codes, flat)
        counts = torch.bincount(codes, minlength=k).double()
        updated = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        if torch.allclose(updated, centroids, atol=1e-12, rtol=0):
            break
        centroids = updated
    centroids, _ = torch.sort(centroids)
    codes = torch.bucketize(flat, (centroids[1:] + centroids[:-1]) / 2)
    return centroids.float(), codes.reshape(values.shape)


class SharedWeightLayer(nn.Module):
    """A conv/linear whose weight is ``centroids[codes]``; only the centroids (and bias) train."""

    codes: torch.Tensor
    mask: torch.Tensor | None

    def __init__(
        self, layer: nn.Module, bits: int, iterations: int = 50, keep_zeros: bool = False
    ) -> None:
        super().__init__()
        assert isinstance(layer, SHAREABLE)
        self.layer, self.bits = layer, bits
        w = layer.weight.detach().contiguous()  # NHWC weights from channels_last training
        # keep_zeros: pruned weights stay exactly zero and do not pull a centroid towards 0.
        mask = (w != 0) if keep_zeros else None
        values = w[mask] if mask is not None and bool(mask.any()) else w
        centroids, _ = kmeans_1d(values, 2**bits, iterations)
        codes = torch.bucketize(w, (centroids[1:] + centroids[:-1]) / 2)
        self.centroids = nn.Parameter(centroids)
        self.register_buffer("codes", codes.to(torch.uint8 if bits <= 8 else torch.int16))
        self.register_buffer("mask", mask.float() if mask is not None else None)
        layer.weight.requires_grad_(False)  # replaced by the codebook

    def weight(self) -> torch.Tensor:
        w = self.centroids[self.codes.long()]
        return w * self.mask if self.mask is not None else w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight()
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w, self.layer.bias)
        return self.layer._conv_forward(x, w, self.layer.bias)

    def storage_bits(self) -> int:
        """Indices at ``bits`` each plus a float32 codebook (before any entropy coding)."""
        return self.codes.numel() * self.bits + self.centroids.numel() * 32


@dataclass
class CodebookConfig(Config):
    bits: int = 4
    layers: list[str] | None = None  # default: every conv and linear layer
    iterations: int = 50
    keep_zeros: bool = False  # for pruned models: zeros stay zero, outside every cluster

    def validate(self) -> None:
        check(1 <= self.bits <= 8, "bits", self.bits, "must be in 1..8")
        check(self.iterations >= 1, "iterations", self.iterations, "must be >= 1")


@dataclass
class CodebookResult:
    model: nn.Module
    layers: list[str] = field(default_factory=list)

    def storage_bytes(self) -> float:
        return (
            sum(m.storage_bits() for m in self.model.modules() if isinstance(m, SharedWeightLayer))
            / 8
        )


def share_weights(model: nn.Module, config: CodebookConfig | None = None) -> CodebookResult:
    """Replace each chosen layer of ``model`` (in place) by its k-means codebook version."""
    config = config or CodebookConfig()
    targets = [
        name
        for name, m in model.named_modules()
        if isinstance(m, SHAREABLE) and (config.layers is None or name in config.layers)
    ]
    if config.layers is not None:
        unknown = sorted(set(config.layers) - set(targets))
        if unknown:
            raise ValueError(f"codebook: no conv/linear layer named {unknown}")
    if not targets:
        raise ValueError("codebook: the model has no conv or linear layer to share weights in")
    for name in targets:
        layer = model.get_submodule(name)
        shared = SharedWeightLayer(layer, config.bits, config.iterations, config.keep_zeros)
        model.set_submodule(name, shared)
    return CodebookResult(model, targets)


@torch.no_grad()
def bake(model: nn.Module) -> nn.Module:
    """Write ``centroids[codes]`` back into plain layers (for export); returns the model."""
    for name, m in list(model.named_modules()):
        if isinstance(m, SharedWeightLayer):
            m.layer.weight.copy_(m.weight())
            m.layer.weight.requires_grad_(True)
            model.set_submodule(name, m.layer)
    return model
