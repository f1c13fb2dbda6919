from __future__ import annotations

import pytest
import torch
from torch import nn

from dlforge.compress.quantize.fold import QuantizationError, fold_batch_norm
from dlforge.models import create_model


def warm_bn(model: nn.Module, shape: tuple[int, ...]) -> None:
    """Give the BN layers non-trivial running statistics and affine parameters."""
    model.train()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
        for _ in range(3):
            model(torch.randn(16, *shape) * 2 + 1)
    model.eval()


@pytest.mark.parametrize(
    ("name", "shape", "kwargs"),
    [
        ("cnn", (1, 8, 8), {}),
        ("resnet20", (3, 16, 16), {}),
        ("resnet20", (2, 40), {"shortcut": "projection"}),
        ("mlp", (12,), {"batch_norm": True}),
    ],
)
def test_folding_preserves_outputs(name: str, shape: tuple[int, ...], kwargs: dict) -> None:
    torch.manual_seed(0)
    model = create_model(name, shape, 10, **kwargs)
    warm_bn(model, shape)
    folded, names = fold_batch_norm(model)
    n_bn = sum(isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) for m in model.modules())
    assert len(names) == n_bn
    assert not any(isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(8, *shape)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
    assert model.training is False and any(
        isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) for m in model.modules()
    )


def test_untraceable_model_is_named() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else -self.fc(x)

    with pytest.raises(QuantizationError, match="cannot trace Branchy"):
        fold_batch_norm(Branchy())
