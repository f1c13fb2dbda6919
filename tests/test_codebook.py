from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from torch import nn

from dlforge.compress.quantize.codebook import (
    CodebookConfig,
    SharedWeightLayer,
    bake,
    kmeans_1d,
    share_weights,
)
from dlforge.models import create_model
from dlforge.train import OptimizerConfig, TrainConfig, Trainer


def test_kmeans_is_a_lloyd_fixed_point_at_least_as_good_as_sklearn() -> None:
    torch.manual_seed(0)
    x = torch.randn(5000) * torch.rand(5000)
    centroids, codes = kmeans_1d(x, 16, iterations=1000)
    data = x.double().numpy().reshape(-1, 1)
    init = np.linspace(x.min().item(), x.max().item(), 16).reshape(-1, 1)
    ref = KMeans(16, init=init, n_init=1, max_iter=1000, tol=0).fit(data)
    inertia = ((x.double() - centroids.double()[codes]) ** 2).sum().item()
    assert inertia <= ref.inertia_ * (1 + 1e-6)
    # One more Lloyd step from our centroids (scikit-learn's) changes nothing.
    step = KMeans(16, init=centroids.double().numpy().reshape(-1, 1), n_init=1, max_iter=1).fit(
        data
    )
    np.testing.assert_allclose(np.sort(step.cluster_centers_.ravel()), centroids.numpy(), atol=1e-5)


def test_centroid_gradient_is_the_sum_over_its_weights() -> None:
    torch.manual_seed(0)
    layer = SharedWeightLayer(nn.Linear(20, 5), bits=2)
    x = torch.randn(7, 20)
    w = layer.weight().detach().requires_grad_()
    nn.functional.linear(x, w, layer.layer.bias).pow(2).sum().backward()
    layer(x).pow(2).sum().backward()
    expected = torch.zeros(4).index_add_(0, layer.codes.flatten().long(), w.grad.flatten())
    torch.testing.assert_close(layer.centroids.grad, expected)


def test_sharing_fine_tuning_and_baking(digits, small_cnn) -> None:
    model = copy.deepcopy(small_cnn)
    x, y = digits.test

    def acc(m: nn.Module) -> float:
        with torch.no_grad():
            return (m.eval()(x).argmax(1) == y).float().mean().item()

    result = share_weights(model, CodebookConfig(bits=2))
    assert result.layers == ["0", "3", "8"]
    for m in model.modules():
        if isinstance(m, SharedWeightLayer):
            assert m.weight().unique().numel() <= 4
    shared = acc(model)
    tune = TrainConfig(epochs=4, progress=False, optimizer=OptimizerConfig(lr=1e-3))
    Trainer(model, tune).fit(digits.loader("train", 64, True, torch.Generator().manual_seed(1)))
    tuned = acc(model)
    assert tuned > shared  # centroid fine-tuning recovers accuracy
    n_weights = sum(m.codes.numel() for m in model.modules() if isinstance(m, SharedWeightLayer))
    assert result.storage_bytes() == pytest.approx(n_weights * 2 / 8 + 3 * 4 * 4)
    baked = bake(model)
    assert not any(isinstance(m, SharedWeightLayer) for m in baked.modules())
    assert acc(baked) == pytest.approx(tuned)
    with pytest.raises(ValueError, match="no conv/linear layer or recurrent matrix named"):
        share_weights(create_model("mlp", (4,), 2), CodebookConfig(layers=["nope"]))
