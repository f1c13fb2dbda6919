from __future__ import annotations

import numpy as np
import pytest
import torch

from dlforge.compress.quantize.observers import OBSERVERS, make_observer
from dlforge.compress.quantize.qscheme import QuantSpec, fake_quantize

ACT = QuantSpec(bits=8, symmetric=False, signed=False)


def batches(seed: int = 0, n: int = 5, outlier: float | None = None) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = [torch.randn(4000, generator=g) * (i + 1) for i in range(n)]
    if outlier is not None:
        out[-1][0] = outlier
    return out


def real_mse(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec) -> float:
    from dlforge.compress.quantize.qscheme import compute_qparams

    scale, zp = compute_qparams(lo, hi, spec)
    return float(((x - fake_quantize(x, scale, zp, spec.qmin, spec.qmax)) ** 2).mean())


def test_minmax_per_tensor_and_per_channel() -> None:
    xs = [torch.randn(8, 3, 4, 4) * (i + 1) for i in range(3)]
    obs = make_observer("minmax", ACT)
    per_ch = make_observer("minmax", QuantSpec(per_channel=True, axis=1))
    for x in xs:
        obs.update(x)
        per_ch.update(x)
    allx = torch.cat(xs)
    assert obs.range() == (allx.min(), allx.max())
    lo, hi = per_ch.range()
    assert torch.equal(lo, allx.amin((0, 2, 3))) and torch.equal(hi, allx.amax((0, 2, 3)))


def test_moving_average() -> None:
    obs = make_observer("moving_average", ACT)
    xs = batches()
    for x in xs:
        obs.update(x)
    expected = xs[0].max()
    for x in xs[1:]:
        expected = expected + 0.1 * (x.max() - expected)
    assert obs.range()[1].item() == pytest.approx(expected.item(), rel=1e-6)


def test_histogram_regrows_exactly_and_percentile_matches_quantile() -> None:
    obs = make_observer("percentile", QuantSpec(bits=8, symmetric=False, signed=True))
    xs = batches()  # each batch wider than the last: the histogram range doubles
    for x in xs:
        obs.update(x)
    allx = torch.cat(xs)
    assert obs.hist.sum() == allx.numel()
    lo, hi = obs.range()
    width = 2 * obs.radius / obs.bins
    assert hi.item() == pytest.approx(torch.quantile(allx, 0.9999).item(), abs=3 * width)
    assert lo.item() == pytest.approx(torch.quantile(allx, 0.0001).item(), abs=3 * width)


@pytest.mark.parametrize("name", ["entropy", "percentile"])
def test_a_lone_outlier_is_clipped(name: str) -> None:
    spec = QuantSpec(bits=8, symmetric=False, signed=True)
    xs = batches(outlier=200.0)
    obs, mm = make_observer(name, spec), make_observer("minmax", spec)
    for x in xs:
        obs.update(x)
        mm.update(x)
    lo, hi = obs.range()
    assert hi.item() < 100  # the lone outlier at 200 is clipped ...
    bulk = torch.cat(xs)[1:]
    bulk = bulk[bulk != 200.0]  # ... so the other 19999 values are quantized more finely
    assert real_mse(bulk, lo, hi, spec) < real_mse(bulk, *mm.range(), spec) / 10


def test_mse_beats_minmax_on_heavy_tails() -> None:
    spec = QuantSpec(bits=4, symmetric=True)
    x = torch.distributions.Laplace(0.0, 1.0).sample((50000,))
    obs, mm = make_observer("mse", spec), make_observer("minmax", spec)
    obs.update(x)
    mm.update(x)
    assert real_mse(x, *obs.range(), spec) < 0.5 * real_mse(x, *mm.range(), spec)


def test_mse_is_optimal_on_its_grid() -> None:
    spec = QuantSpec(bits=4, symmetric=True)
    obs = make_observer("mse", spec)
    x = torch.distributions.Laplace(0.0, 1.0).sample((20000,))
    obs.update(x)
    lo, hi = obs.range()
    chosen = real_mse(x, lo, hi, spec)
    for alpha in np.linspace(0.05, 1.0, 20):
        assert chosen <= real_mse(x, x.min() * alpha, x.max() * alpha, spec) * 1.02


def test_entropy_keeps_the_whole_range_of_uniform_data() -> None:
    obs = make_observer("entropy", ACT)
    obs.update(torch.rand(50000) * 6)
    lo, hi = obs.range()
    assert 0.0 <= lo.item() < 1e-3 and hi.item() > 5.4


def test_no_data_is_a_clear_error_and_constants_are_fine() -> None:
    for name in OBSERVERS:
        obs = make_observer(name, ACT)
        with pytest.raises(ValueError, match="seen no data"):
            obs.qparams()
        obs.update(torch.zeros(100))
        scale, _ = obs.qparams()
        assert torch.isfinite(scale).all() and scale.item() > 0
    with pytest.raises(ValueError, match="unknown observer 'minmx'"):
        make_observer("minmx", ACT)
