from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dlforge.compress.lowrank import (
    LowRankConfig,
    factorize,
    factorize_conv,
    factorize_linear,
    tucker2,
)
from dlforge.models import create_model


def test_truncated_svd_is_the_eckart_young_optimum() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(40, 30)
    s = torch.linalg.svdvals(layer.weight.detach().double())
    for rank in (5, 15, 30):
        f = factorize_linear(layer, rank)
        w = (f[1].weight @ f[0].weight).double()
        err = torch.linalg.norm(w - layer.weight.double())
        assert err.item() == pytest.approx(torch.sqrt((s[rank:] ** 2).sum()).item(), abs=1e-4)
    x = torch.randn(4, 40)
    torch.testing.assert_close(factorize_linear(layer, 30)(x), layer(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "conv", [nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.Conv1d(6, 8, 5, padding=2)]
)
def test_full_rank_tucker_reproduces_the_convolution(conv: nn.Module) -> None:
    torch.manual_seed(0)
    f = factorize_conv(conv, 8, 6)
    x = torch.randn(2, 6, *([9, 9] if isinstance(conv, nn.Conv2d) else [17]))
    torch.testing.assert_close(f(x), conv(x), rtol=1e-4, atol=1e-5)


def test_hooi_does_not_worsen_hosvd() -> None:
    torch.manual_seed(0)
    k = torch.randn(16, 12, 3, 3)

    def error(iterations: int) -> float:
        u_out, u_in, core = tucker2(k, 6, 5, iterations)
        approx = torch.einsum("rs...,or,is->oi...", core, u_out, u_in)
        return torch.linalg.norm(approx - k.double()).item()

    assert error(5) <= error(0) + 1e-9


def test_ratio_halves_the_factorised_layers() -> None:
    torch.manual_seed(0)
    model = create_model("cnn", (1, 16, 16), 10, channels=[32, 64])
    ref = copy.deepcopy(model)
    result = factorize(model, LowRankConfig(mode="ratio", ratio=0.5))
    assert set(result.ranks) == {"0", "3", "8"}
    for name in result.ranks:
        assert result.params_after[name] <= 0.5 * result.params_before[name] * 1.05
    out = model(torch.randn(2, 1, 16, 16))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    energy = factorize(
        copy.deepcopy(ref), LowRankConfig(mode="energy", energy=0.999999, layers=["8"])
    )
    assert "8" not in energy.ranks  # keeping all the energy would not make it smaller
    with pytest.raises(ValueError, match="no linear/conv layer named"):
        factorize(ref, LowRankConfig(layers=["nope"]))
