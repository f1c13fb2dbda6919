"""The arithmetic of uniform quantization: ranges, scales, zero-points, (fake-)quantize.

Symmetric: zero maps to zero (zero_point 0 for signed integers), scale = max|x| / qmax, and the
signed range is narrowed to [-(2^(b-1) - 1), 2^(b-1) - 1] so +a and -a quantize symmetrically.
Asymmetric (affine): the range [min, max] (widened to contain 0, so zero is exact) maps onto
[qmin, qmax] with scale = (max - min) / (qmax - qmin) and an integer zero_point; e.g. 0..255 for
unsigned 8 bits. Rounding is to nearest, ties to even, as ``torch.fake_quantize_*`` and ONNX
QuantizeLinear do; the tests check bit-exact agreement with PyTorch's kernels.
"""

from __future__ import annotations

import torch

from dlforge.compress.quantize.qspec import QuantSpec

EPS = torch.finfo(torch.float32).eps


def compute_qparams(
    min_val: torch.Tensor, max_val: torch.Tensor, spec: QuantSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (float32) and zero_point (int32) for the range [min_val, max_val] (per channel ok).

    A zero-width range (a constant tensor) gets the smallest positive scale instead of 0, so
    nothing divides by zero and the constant is still reproduced exactly when it is 0.
    """
    min_val = torch.clamp(torch.as_tensor(min_val, dtype=torch.float32), max=0.0)
    max_val = torch.clamp(torch.as_tensor(max_val, dtype=torch.float32), min=0.0)
    qmin, qmax = spec.qmin, spec.qmax
    if spec.symmetric:
        amax = torch.maximum(-min_val, max_val)
        scale = amax / ((qmax - qmin) / 2)
        zp_value = 0 if spec.signed else (qmin + qmax + 1) // 2
        zero_point = torch.full_like(scale, zp_value, dtype=torch.int32)
    else:
        scale = (max_val - min_val) / (qmax - qmin)
        scale = torch.clamp(scale, min=EPS)
        zero_point = (qmin - torch.round(min_val / scale)).clamp(qmin, qmax).to(torch.int32)
    scale = torch.clamp(scale, min=EPS)
    return scale, zero_point


def _shape(t: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    if axis is None or t.dim() == 0:
        return t
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


def quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    qmin: int,
    qmax: int,
    axis: int | None = None,
) -> torch.Tensor:
    """Integer codes clamp(round(x / scale) + zero_point, qmin, qmax), as int32."""
    inv = 1.0 / _shape(scale.float(), x, axis)  # PyTorch's kernels multiply by 1/scale
    zp = _shape(zero_point, x, axis)
    return torch.clamp(torch.round(x.float() * inv) + zp, qmin, qmax).to(torch.int32)


def dequantize(
    q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int | None = None
) -> torch.Tensor:
    return (q - _shape(zero_point, q, axis)).float() * _shape(scale.float(), q, axis)


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    qmin: int,
    qmax: int,
    axis: int | None = None,
) -> torch.Tensor:
    """Quantize then dequantize: the float values the integer kernels will compute with."""
    return dequantize(quantize(x, scale, zero_point, qmin, qmax, axis), scale, zero_point, axis)


class _FakeQuantSTE(torch.autograd.Function):
    """Fake quantization whose gradient is the straight-through estimator: 1 inside the range,
    0 where the value was clamped (Bengio et al., 2013; as ``torch.fake_quantize_*``)."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax, axis):
        inv = 1.0 / _shape(scale.float(), x, axis)
        zp = _shape(zero_point, x, axis)
        codes = torch.round(x * inv) + zp
        ctx.save_for_backward((codes >= qmin) & (codes <= qmax))
        return (torch.clamp(codes, qmin, qmax) - zp) * _shape(scale.float(), x, axis)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None, None


def fake_quantize_ste(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    qmin: int,
    qmax: int,
    axis: int | None = None,
) -> torch.Tensor:
    out: torch.Tensor = _FakeQuantSTE.apply(x, scale, zero_point, qmin, qmax, axis)
    return out


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def _grad_scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Forward: x; backward: gradient times ``factor``."""
    return (x - x * factor).detach() + x * factor


def fake_quantize_lsq(
    x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int, axis: int | None = None
) -> torch.Tensor:
    """Learned step size quantization (Esser et al., 2020), symmetric (zero_point 0).

    The scale receives a gradient; its gradient is scaled by 1/sqrt(numel * qmax) as the paper
    prescribes, so the step size learns at a rate comparable to the weights.
    """
    per = x.numel() / (scale.numel() if axis is not None else 1)
    s = _grad_scale(_shape(scale, x, axis), 1.0 / (per * qmax) ** 0.5)
    return _round_ste(torch.clamp(x / s, qmin, qmax)) * s
