"""Common corruptions (dlforge.robust.corruptions): each one against an independent reference.

Blur is checked against scipy.ndimage.gaussian_filter, contrast against its formula, shift
against hand-written and loop-built tensors; noise statistically. Severity must make every
corruption move the data further, inputs must never change, and corruption_curves must report
exactly what a direct computation gives.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from dlforge.robust.corruptions import (
    BLUR_SIGMA,
    CONTRAST_FACTOR,
    CORRUPTIONS,
    NOISE_STD,
    SEVERITIES,
    corrupt,
    corruption_curves,
    shift_by,
    shift_offsets,
)


def _smooth_images(n: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Low-frequency images (periods >= 2x the largest shift), so moving or blurring them more
    moves them further from where they were."""
    g = torch.Generator().manual_seed(seed)
    yy = torch.arange(h, dtype=torch.float64).view(h, 1)
    xx = torch.arange(w, dtype=torch.float64).view(1, w)
    out = torch.zeros(n, c, h, w, dtype=torch.float64)
    for _ in range(3):  # periods of 12 to 40 pixels along each axis
        a, fy, fx, ph = torch.rand(4, n, c, 1, 1, generator=g, dtype=torch.float64)
        phase = 2 * math.pi * ((0.025 + 0.058 * fy) * yy + (0.025 + 0.058 * fx) * xx + ph)
        out += (0.5 + a) * torch.sin(phase)
    return out.float()


def _smooth_signals(n: int, c: int, length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length, dtype=torch.float64)
    out = torch.zeros(n, c, length, dtype=torch.float64)
    for _ in range(3):  # periods of 22 to 100 samples
        a, f, ph = torch.rand(3, n, c, 1, generator=g, dtype=torch.float64)
        out += (0.5 + a) * torch.sin(2 * math.pi * ((0.01 + 0.035 * f) * t + ph))
    return out.float()


# --- blur ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("severity", SEVERITIES)
def test_blur_matches_scipy_on_images(severity: int) -> None:
    x = torch.randn(3, 2, 8, 11, dtype=torch.float64)
    sigma = BLUR_SIGMA[severity - 1]
    expected = gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma), mode="reflect", truncate=4.0)
    out = corrupt(x, "blur", severity)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5, rtol=0)
    assert not torch.allclose(out, x, atol=1e-3)  # it did blur


@pytest.mark.parametrize("severity", SEVERITIES)
def test_blur_matches_scipy_on_signals(severity: int) -> None:
    x = torch.randn(4, 3, 40)  # float32, as the data comes
    sigma = BLUR_SIGMA[severity - 1]
    expected = gaussian_filter(
        x.double().numpy(), sigma=(0, 0, sigma), mode="reflect", truncate=4.0
    )
    out = corrupt(x, "blur", severity)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.double().numpy(), expected, atol=1e-5, rtol=0)


def test_blur_kernel_wider_than_the_input_still_matches_scipy() -> None:
    # sigma 1.3 -> radius 5, wider than a 3-sample signal or a 2x4 image: the reflection repeats.
    x1 = torch.randn(2, 1, 3, dtype=torch.float64)
    ref1 = gaussian_filter(x1.numpy(), sigma=(0, 0, 1.3), mode="reflect", truncate=4.0)
    np.testing.assert_allclose(corrupt(x1, "blur", 5).numpy(), ref1, atol=1e-5, rtol=0)
    x2 = torch.randn(2, 2, 2, 4, dtype=torch.float64)
    ref2 = gaussian_filter(x2.numpy(), sigma=(0, 0, 1.3, 1.3), mode="reflect", truncate=4.0)
    np.testing.assert_allclose(corrupt(x2, "blur", 5).numpy(), ref2, atol=1e-5, rtol=0)


def test_blur_keeps_channels_apart_and_constants_constant() -> None:
    x = torch.zeros(1, 2, 6, 6)
    x[0, 1] = 3.0
    out = corrupt(x, "blur", 5)
    torch.testing.assert_close(out, x)


# --- contrast -----------------------------------------------------------------------------------


@pytest.mark.parametrize("severity", SEVERITIES)
def test_contrast_matches_the_formula(severity: int) -> None:
    x = torch.rand(3, 2, 5, 7, dtype=torch.float64) * 4 - 1
    c = CONTRAST_FACTOR[severity - 1]
    expected = np.empty_like(x.numpy())
    for n in range(3):
        for ch in range(2):
            plane = x[n, ch].numpy()
            expected[n, ch] = (plane - plane.mean()) * c + plane.mean()
    out = corrupt(x, "contrast", severity)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-12, rtol=0)
    # Each sample and channel keeps its mean; its spread shrinks by exactly c.
    torch.testing.assert_close(out.mean(dim=(2, 3)), x.mean(dim=(2, 3)))
    torch.testing.assert_close(out.std(dim=(2, 3)), c * x.std(dim=(2, 3)))


def test_contrast_on_signals_uses_each_samples_own_mean() -> None:
    x = torch.tensor([[[0.0, 2.0, 4.0]], [[10.0, 10.0, 13.0]]])
    out = corrupt(x, "contrast", 1)  # c = 0.4
    expected = torch.tensor([[[1.2, 2.0, 2.8]], [[10.6, 10.6, 11.8]]])
    torch.testing.assert_close(out, expected)


# --- shift --------------------------------------------------------------------------------------


def test_shift_by_signals_by_hand() -> None:
    x = torch.tensor([[[1.0, 2, 3, 4, 5]], [[1.0, 2, 3, 4, 5]]])
    offsets = torch.tensor([[2], [-2]])
    torch.testing.assert_close(
        shift_by(x, offsets, fill=0.0), torch.tensor([[[0.0, 0, 1, 2, 3]], [[3.0, 4, 5, 0, 0]]])
    )
    torch.testing.assert_close(
        shift_by(x, offsets), torch.tensor([[[1.0, 1, 1, 2, 3]], [[3.0, 4, 5, 5, 5]]])
    )


def test_shift_by_images_by_hand() -> None:
    x = torch.tensor([[[[1.0, 2, 3], [4, 5, 6], [7, 8, 9]]]])
    down_left = torch.tensor([[1, -1]])  # one row down, one column left
    torch.testing.assert_close(
        shift_by(x, down_left, fill=-1.0),
        torch.tensor([[[[-1.0, -1, -1], [2, 3, -1], [5, 6, -1]]]]),
    )
    torch.testing.assert_close(
        shift_by(x, down_left), torch.tensor([[[[2.0, 3, 3], [2, 3, 3], [5, 6, 6]]]])
    )


def test_shift_by_matches_a_loop_reference() -> None:
    x = torch.randn(4, 2, 6, 5)
    offsets = torch.tensor([[2, -1], [-3, 0], [0, 4], [1, 1]])
    for fill in (None, 0.5):
        expected = torch.empty_like(x)
        for n in range(4):
            dy, dx = offsets[n].tolist()
            for i in range(6):
                for j in range(5):
                    si, sj = i - dy, j - dx
                    inside = 0 <= si < 6 and 0 <= sj < 5
                    if fill is not None and not inside:
                        expected[n, :, i, j] = fill
                    else:
                        expected[n, :, i, j] = x[n, :, min(max(si, 0), 5), min(max(sj, 0), 4)]
        torch.testing.assert_close(shift_by(x, offsets, fill=fill), expected)


def test_shift_magnitudes_and_directions() -> None:
    signals = torch.randn(50, 1, 40)
    ks = [shift_offsets(signals, f, seed=3).abs().unique().tolist() for f in (0.05, 0.25)]
    assert ks == [[2], [10]]
    images = torch.randn(50, 1, 8, 8)
    off = [shift_offsets(images, 0.05 * s, seed=3) for s in SEVERITIES]
    # 8x8: k = max(1, round(f * 8)) = 1, 1, 1, 2, 2; the direction is the same at every severity.
    assert [int(o.abs().max()) for o in off] == [1, 1, 1, 2, 2]
    assert torch.equal(off[0] * 2, off[4])
    assert torch.equal(off[0].abs().amax(dim=1), torch.ones(50, dtype=torch.long))  # no (0, 0)
    assert len({tuple(d) for d in off[0].tolist()}) == 8  # all 8 directions get drawn


def test_corrupt_shift_is_shift_by_with_lo_as_fill_and_not_circular() -> None:
    x = torch.rand(6, 1, 20)
    out = corrupt(x, "shift", 5, lo=-1.0, hi=2.0, seed=4)
    offsets = shift_offsets(x, 0.25, seed=4)
    torch.testing.assert_close(out, shift_by(x, offsets, fill=-1.0))
    # k = 5: exactly 5 samples are uncovered per signal, and they hold lo, not wrapped content.
    assert torch.equal((out == -1.0).sum(dim=(1, 2)), torch.full((6,), 5))


# --- noise --------------------------------------------------------------------------------------


def test_noise_is_seeded_and_leaves_the_global_generator_alone() -> None:
    x = torch.rand(8, 1, 8, 8)
    state = torch.get_rng_state()
    a = corrupt(x, "gaussian_noise", 3, lo=0.0, hi=1.0, seed=7)
    b = corrupt(x, "gaussian_noise", 3, lo=0.0, hi=1.0, seed=7)
    c = corrupt(x, "gaussian_noise", 3, lo=0.0, hi=1.0, seed=8)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 0.05


@pytest.mark.parametrize("severity", SEVERITIES)
def test_noise_std_is_a_fraction_of_the_data_std_without_bounds(severity: int) -> None:
    x = torch.randn(200, 1, 500) * 3.0 + 1.0
    noise = corrupt(x, "gaussian_noise", severity) - x
    expected = NOISE_STD[severity - 1] * float(x.std())
    assert abs(float(noise.std()) / expected - 1) < 0.02
    assert abs(float(noise.mean())) < 0.02 * expected


@pytest.mark.parametrize("severity", [1, 2])
def test_noise_std_is_a_fraction_of_the_range_with_bounds(severity: int) -> None:
    x = torch.zeros(200, 1, 500)  # r = 20; at 1.6 and 2.4 the clipping at +-10 is negligible
    noise = corrupt(x, "gaussian_noise", severity, lo=-10.0, hi=10.0) - x
    assert abs(float(noise.std()) / (NOISE_STD[severity - 1] * 20.0) - 1) < 0.02


def test_noise_is_clipped_to_the_bounds() -> None:
    x = torch.rand(64, 1, 8, 8)
    out = corrupt(x, "gaussian_noise", 5, lo=0.0, hi=1.0)
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0  # clipped, and it did reach both
    only_lo = corrupt(x, "gaussian_noise", 5, lo=0.0)
    assert float(only_lo.min()) == 0.0 and float(only_lo.max()) > 1.2


# --- all corruptions ------------------------------------------------------------------------------


def _distances(
    x: torch.Tensor, name: str, lo: float | None = None, hi: float | None = None
) -> list[float]:
    return [float((corrupt(x, name, s, lo=lo, hi=hi) - x).abs().mean()) for s in SEVERITIES]


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_severity_moves_the_data_further(name: str) -> None:
    # Sizes whose shifts are all distinct (20 -> k = 1..5, 40 -> k = 2..10).
    for x in (_smooth_images(16, 2, 20, 20), _smooth_signals(16, 2, 40)):
        d = _distances(x, name)
        assert d[0] > 0 and all(a < b for a, b in itertools.pairwise(d)), (name, x.dim(), d)
    # 8x8 digits-like images in [0, 1]: shift can only take k = 1 or 2 there, so not strictly.
    digits = _smooth_images(16, 1, 8, 8).sigmoid()
    d = _distances(digits, name, lo=0.0, hi=1.0)
    assert d[0] > 0 and all(a <= b for a, b in itertools.pairwise(d)), (name, d)
    assert d[4] > d[0]
    if name == "shift":
        assert d[0] == d[1] == d[2] and d[3] == d[4]


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_input_unchanged_and_shape_dtype_kept(name: str) -> None:
    for x in (torch.rand(3, 2, 8, 8), torch.rand(3, 1, 40, dtype=torch.float64)):
        before = x.clone()
        out = corrupt(x, name, 5, lo=0.0, hi=1.0)
        assert torch.equal(x, before)
        assert out.shape == x.shape and out.dtype == x.dtype
        assert out.data_ptr() != x.data_ptr()
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    half = torch.rand(2, 1, 8, 8).half()
    out = corrupt(half, name, 3)
    assert out.dtype == torch.float16
    ref = corrupt(half.float(), name, 3)
    torch.testing.assert_close(out.float(), ref, atol=2e-3, rtol=2e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_same_result_on_cuda(name: str) -> None:
    x = torch.rand(4, 2, 8, 8)
    out = corrupt(x.cuda(), name, 4, lo=0.0, hi=1.0, seed=2)
    assert out.is_cuda
    torch.testing.assert_close(out.cpu(), corrupt(x, name, 4, lo=0.0, hi=1.0, seed=2))


@pytest.mark.parametrize(
    "x",
    [torch.rand(5, 10), torch.rand(2, 1, 3, 8, 8), torch.randint(0, 255, (2, 1, 8, 8))],
    ids=["tabular", "5-d", "integer"],
)
def test_refuses_other_shapes_and_dtypes(x: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"need \(N, C, L\) signals or \(N, C, H, W\) images") as e:
        corrupt(x, "blur", 1)
    assert str(tuple(x.shape)) in str(e.value) and str(x.dtype) in str(e.value)
    with pytest.raises(ValueError, match=r"need \(N, C, L\) signals"):
        corruption_curves(lambda t: t, x, torch.zeros(len(x), dtype=torch.long))


def test_refuses_bad_names_and_severities() -> None:
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="'snow'") as e:
        corrupt(x, "snow", 1)
    assert all(n in str(e.value) for n in CORRUPTIONS)
    for bad in (0, 6, -1, 2.0, True):
        with pytest.raises(ValueError, match="severity") as e:
            corrupt(x, "blur", bad)  # type: ignore[arg-type]
        assert repr(bad) in str(e.value)
    with pytest.raises(ValueError, match="lo must be below hi"):
        corrupt(x, "contrast", 1, lo=1.0, hi=1.0)


# --- corruption_curves ----------------------------------------------------------------------------


def _linear_task() -> tuple[torch.nn.Linear, torch.Tensor, torch.Tensor]:
    """A fixed linear model on 8x8 images and labels it gets right for exactly 30 of 40."""
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 4)
    x = _smooth_images(40, 1, 8, 8, seed=1).sigmoid()
    with torch.no_grad():
        y = model(x.flatten(1)).argmax(dim=1)
    y[30:] = (y[30:] + 1) % 4
    return model, x, y


def test_corruption_curves_reports_what_a_direct_computation_gives() -> None:
    model, x, y = _linear_task()
    grad_seen: list[bool] = []

    def predict(batch: torch.Tensor) -> torch.Tensor:
        grad_seen.append(torch.is_grad_enabled())
        return model(batch.flatten(1))

    curves = corruption_curves(predict, x, y, lo=0.0, hi=1.0, seed=5, batch_size=16)
    assert list(curves) == list(CORRUPTIONS)
    assert grad_seen and not any(grad_seen)
    for name, curve in curves.items():
        assert set(curve) == {"severity", "accuracy"}
        assert curve["severity"] == [0, 1, 2, 3, 4, 5]
        acc = curve["accuracy"]
        assert len(acc) == 6 and all(type(a) is float and 0.0 <= a <= 1.0 for a in acc)
        assert acc[0] == 0.75
        with torch.no_grad():
            for s in SEVERITIES:
                xc = corrupt(x, name, s, lo=0.0, hi=1.0, seed=5)
                direct = int((model(xc.flatten(1)).argmax(dim=1) == y).sum()) / len(y)
                assert acc[s] == direct, (name, s)
    # Something was actually corrupted enough to change predictions.
    assert any(a != 0.75 for c in curves.values() for a in c["accuracy"][1:])


def test_corruption_curves_does_not_depend_on_batch_size_and_takes_a_subset() -> None:
    model, x, y = _linear_task()

    def predict(batch: torch.Tensor) -> torch.Tensor:
        return model(batch.flatten(1))

    a = corruption_curves(predict, x, y, names=["gaussian_noise", "shift"], batch_size=7)
    b = corruption_curves(predict, x, y, names=["gaussian_noise", "shift"], batch_size=256)
    assert a == b and list(a) == ["gaussian_noise", "shift"]


def test_corruption_curves_refuses_bad_arguments_before_predicting() -> None:
    model, x, y = _linear_task()
    calls: list[int] = []

    def predict(batch: torch.Tensor) -> torch.Tensor:
        calls.append(len(batch))
        return model(batch.flatten(1))

    with pytest.raises(ValueError, match="'fog'"):
        corruption_curves(predict, x, y, names=["blur", "fog"])
    with pytest.raises(ValueError, match=r"y must be \(N,\)"):
        corruption_curves(predict, x, y[:10])
    assert calls == []
