"""Weight sharing with a k-means codebook per layer (Han et al., "Deep Compression", 2016).

Each layer's weights are clustered into 2^b centroids (1-D k-means, linear initialisation over
[min, max], which the paper found best at keeping the rare large weights). The layer then stores
b-bit indices plus a small float codebook. During fine-tuning the weight is ``centroids[codes]``,
so autograd gives each centroid the sum of the gradients of the weights that share it, exactly
the paper's centroid update.

Conv and linear layers are wrapped (``SharedWeightLayer``); the weight matrices of GRU/LSTM
layers, which the recurrent kernel reads as attributes, get the same codebook as a
``parametrize`` parametrization (``SharedTensor``), so the module itself is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

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


class _Codebook(nn.Module):
    """A weight as ``centroids[codes]`` (times a 0/1 mask of pruned weights)."""

    codes: torch.Tensor
    mask: torch.Tensor | None

    def _cluster(self, weight: torch.Tensor, bits: int, iterations: int, keep_zeros: bool) -> None:
        self.bits = bits
        w = weight.detach().contiguous()  # NHWC weights from channels_last training
        # keep_zeros: pruned weights stay exactly zero and do not pull a centroid towards 0.
        mask = (w != 0) if keep_zeros else None
        values = w[mask] if mask is not None and bool(mask.any()) else w
        centroids, _ = kmeans_1d(values, 2**bits, iterations)
        codes = torch.bucketize(w, (centroids[1:] + centroids[:-1]) / 2)
        self.centroids = nn.Parameter(centroids)
        self.register_buffer("codes", codes.to(torch.uint8 if bits <= 8 else torch.int16))
        self.register_buffer("mask", mask.float() if mask is not None else None)

    def weight(self) -> torch.Tensor:
        w = self.centroids[self.codes.long()]
        return w * self.mask if self.mask is not None else w

    def storage_bits(self) -> int:
        """Indices at ``bits`` each plus a float32 codebook (before any entropy coding)."""
        return self.codes.numel() * self.bits + self.centroids.numel() * 32


class SharedTensor(_Codebook):
    """A ``parametrize`` parametrization: the tensor it replaces reads ``centroids[codes]``."""

    def __init__(
        self, weight: torch.Tensor, bits: int, iterations: int = 50, keep_zeros: bool = False
    ) -> None:
        super().__init__()
        self._cluster(weight, bits, iterations, keep_zeros)

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        del original  # replaced by the codebook (kept by parametrize, no longer trained)
        return self.weight()


class SharedWeightLayer(_Codebook):
    """A conv/linear whose weight is ``centroids[codes]``; only the centroids (and bias) train."""

    def __init__(
        self, layer: nn.Module, bits: int, iterations: int = 50, keep_zeros: bool = False
    ) -> None:
        super().__init__()
        assert isinstance(layer, SHAREABLE)
        self.layer = layer
        self._cluster(layer.weight, bits, iterations, keep_zeros)
        layer.weight.requires_grad_(False)  # replaced by the codebook

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight()
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w, self.layer.bias)
        return self.layer._conv_forward(x, w, self.layer.bias)


@dataclass
class CodebookConfig(Config):
    bits: int = 4
    # default: every conv and linear layer and every GRU/LSTM weight matrix ("gru.weight_hh_l0")
    layers: list[str] | None = None
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
        return sum(m.storage_bits() for m in self.model.modules() if isinstance(m, _Codebook)) / 8


def recurrent_matrices(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """GRU/LSTM/RNN weight matrices by name (``gru.weight_ih_l0``): (module, tensor name)."""
    return {
        f"{name}.{t}": (m, t)
        for name, m in model.named_modules()
        if isinstance(m, nn.RNNBase)
        for t in m._flat_weights_names
        if t.startswith("weight_")
    }


def shared_tensors(model: nn.Module) -> dict[str, SharedTensor]:
    """The recurrent matrices that hold a codebook, by name."""
    out = {}
    for name, (m, t) in recurrent_matrices(model).items():
        if parametrize.is_parametrized(m, t):
            plist = m.parametrizations[t]  # type: ignore[index]
            found = [p for p in plist if isinstance(p, SharedTensor)]
            if found:
                out[name] = found[0]
    return out


def share_weights(model: nn.Module, config: CodebookConfig | None = None) -> CodebookResult:
    """Give each chosen layer of ``model`` (in place) a k-means codebook: conv/linear layers
    become ``SharedWeightLayer``s, recurrent matrices get a ``SharedTensor`` parametrization."""
    config = config or CodebookConfig()
    layers = [n for n, m in model.named_modules() if isinstance(m, SHAREABLE)]
    matrices = recurrent_matrices(model)
    if config.layers is not None:
        unknown = sorted(set(config.layers) - set(layers) - set(matrices))
        if unknown:
            raise ValueError(f"codebook: no conv/linear layer or recurrent matrix named {unknown}")
        layers = [n for n in layers if n in config.layers]
        matrices = {n: v for n, v in matrices.items() if n in config.layers}
    if not layers and not matrices:
        raise ValueError("codebook: the model has no conv, linear or recurrent weights to share")
    for name in layers:
        layer = model.get_submodule(name)
        shared = SharedWeightLayer(layer, config.bits, config.iterations, config.keep_zeros)
        model.set_submodule(name, shared)
    for module, tensor in matrices.values():
        weight = getattr(module, tensor)
        book = SharedTensor(weight, config.bits, config.iterations, config.keep_zeros)
        parametrize.register_parametrization(module, tensor, book)
        module.parametrizations[tensor].original.requires_grad_(False)  # type: ignore[index,union-attr]
    return CodebookResult(model, [*layers, *matrices])


@torch.no_grad()
def bake(model: nn.Module) -> nn.Module:
    """Write ``centroids[codes]`` back into plain layers and tensors (for export)."""
    from dlforge.compress.prune import own_class

    for name, m in list(model.named_modules()):
        if isinstance(m, SharedWeightLayer):
            m.layer.weight.copy_(m.weight())
            m.layer.weight.requires_grad_(True)
            model.set_submodule(name, m.layer)
    for name in shared_tensors(model):
        module_name, _, tensor = name.rpartition(".")
        module = model.get_submodule(module_name)
        own_class(module)
        parametrize.remove_parametrizations(module, tensor, leave_parametrized=True)
        getattr(module, tensor).requires_grad_(True)
    return model
