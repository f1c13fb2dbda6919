"""Our quantization arithmetic against PyTorch's own fake-quantize kernels, bit for bit."""

from __future__ import annotations

import itertools

import pytest
import torch

from dlforge.compress.quantize.qscheme import (
    QuantSpec,
    compute_qparams,
    dequantize,
    fake_quantize,
    fake_quantize_lsq,
    fake_quantize_ste,
    quantize,
)

SPECS = [
    QuantSpec(bits=b, symmetric=sym, signed=sgn)
    for b, sym, sgn in itertools.product((2, 3, 4, 8), (True, False), (True, False))
]


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_per_tensor_matches_torch(spec: QuantSpec) -> None:
    torch.manual_seed(spec.bits)
    x = torch.randn(1000) * 3 + 0.5
    scale, zp = compute_qparams(x.min(), x.max(), spec)
    ours = fake_quantize(x, scale, zp, spec.qmin, spec.qmax)
    ref = torch.fake_quantize_per_tensor_affine(x, scale.item(), int(zp), spec.qmin, spec.qmax)
    assert torch.equal(ours, ref)
    codes = quantize(x, scale, zp, spec.qmin, spec.qmax)
    assert codes.min() >= spec.qmin and codes.max() <= spec.qmax
    assert torch.equal(dequantize(codes, scale, zp), ours)


@pytest.mark.parametrize("spec", SPECS[::3], ids=str)
@pytest.mark.parametrize("axis", [0, 1, 3])
def test_per_channel_matches_torch(spec: QuantSpec, axis: int) -> None:
    torch.manual_seed(axis)
    x = torch.randn(4, 5, 3, 6) * torch.rand(1, 5, 1, 1) * 4
    dims = [d for d in range(4) if d != axis]
    scale, zp = compute_qparams(x.amin(dims), x.amax(dims), spec)
    ours = fake_quantize(x, scale, zp, spec.qmin, spec.qmax, axis)
    ref = torch.fake_quantize_per_channel_affine(x, scale, zp, axis, spec.qmin, spec.qmax)
    assert torch.equal(ours, ref)


def test_asymmetric_maps_the_range_onto_the_integers() -> None:
    spec = QuantSpec(bits=8, symmetric=False, signed=False)
    scale, zp = compute_qparams(torch.tensor(-1.0), torch.tensor(3.0), spec)
    assert scale.item() == pytest.approx(4 / 255)
    assert int(zp) == 64  # real 0 sits at code round(1 / (4/255)) = 64
    x = torch.tensor([-1.0, 0.0, 3.0])
    assert quantize(x, scale, zp, 0, 255).tolist() == [0, 64, 255]
    assert fake_quantize(x, scale, zp, 0, 255)[1].item() == 0.0  # zero is exact


def test_symmetric_is_zero_centred_and_narrow() -> None:
    spec = QuantSpec(bits=8)
    assert (spec.qmin, spec.qmax) == (-127, 127)
    scale, zp = compute_qparams(torch.tensor(-0.5), torch.tensor(2.0), spec)
    assert int(zp) == 0 and scale.item() == pytest.approx(2.0 / 127)


def test_constant_tensor_gets_a_valid_scale() -> None:
    for spec in SPECS:
        for value in (0.0, 5.0, -2.0):
            x = torch.full((10,), value)
            scale, zp = compute_qparams(x.min(), x.max(), spec)
            assert torch.isfinite(scale).all() and scale.item() > 0
            out = fake_quantize(x, scale, zp, spec.qmin, spec.qmax)
            assert torch.isfinite(out).all()
            assert torch.allclose(out, x, atol=float(scale) / 2 + 1e-6)


def test_ste_gradient_is_one_inside_and_zero_where_clamped() -> None:
    x = torch.tensor([-3.0, -0.5, 0.0, 0.7, 3.0], requires_grad=True)
    scale, zp = torch.tensor(0.01), torch.tensor(0, dtype=torch.int32)
    fake_quantize_ste(x, scale, zp, -127, 127).sum().backward()
    ref = x.detach().clone().requires_grad_()
    torch.fake_quantize_per_tensor_affine(ref, 0.01, 0, -127, 127).sum().backward()
    assert torch.equal(x.grad, ref.grad)
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_lsq_matches_the_paper_gradient() -> None:
    """d(out)/ds = -x/s + round(x/s) inside the range, qmin or qmax outside (Esser et al.)."""
    x = torch.tensor([-5.0, -0.26, 0.13, 0.74, 5.0])
    s = torch.tensor(0.1, requires_grad=True)
    out = fake_quantize_lsq(x, s, -7, 7)
    out.sum().backward()
    v = x / 0.1
    inside = (v > -7) & (v < 7)
    expected = torch.where(inside, -v + torch.round(v), torch.clamp(v, -7, 7))
    g = 1.0 / (x.numel() * 7) ** 0.5
    assert s.grad.item() == pytest.approx(expected.sum().item() * g, rel=1e-5)
    assert torch.allclose(out, torch.clamp(torch.round(v), -7, 7) * 0.1)
