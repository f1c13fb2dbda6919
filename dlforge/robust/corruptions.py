"""Common corruptions at five severities, for (N, C, H, W) images and (N, C, L) signals.

A model's clean test accuracy says little about how it degrades when the inputs are a bit worse
than the training data: noisier sensors, defocus, poor exposure, misaligned crops. Following
Hendrycks & Dietterich (2019, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations", the ImageNet-C paper), this module applies a small family of such corruptions at
five graded severities and measures accuracy along each, so that two models (say, a float one
and its compressed copy) can be compared on how gracefully they fail, not only on where they
start.

Four corruptions cover the main kinds of change and each has a meaning for both images and 1-D
signals:

``gaussian_noise``
    additive i.i.d. noise (sensor noise);
``blur``
    a separable Gaussian blur (defocus, a low-pass sensor);
``contrast``
    shrinking each sample's deviations from its own mean (exposure, gain);
``shift``
    a translation with no wrap-around (misaligned crop or window).

Inputs are in the data's *raw* units, before any normalisation, because that is where a
corruption has a physical meaning and where clipping to the valid range makes sense. Strengths
are relative, so one table serves data of any scale: noise is a fraction of ``r = hi - lo`` when
both bounds are given, else of the standard deviation of ``x`` (unbounded signals such as
MNIST-1D); blur widths and shifts are in pixels/samples or fractions of the side/length.

Randomness (noise values, shift directions) comes from a local ``torch.Generator`` seeded by
``seed``, never from torch's global generator, so corrupting data does not change a training
run's stream, and the same seed gives the same corruption. Draws are made on the CPU and moved
to ``x``'s device, so the result is also the same on every device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

CORRUPTIONS: tuple[str, ...] = ("gaussian_noise", "blur", "contrast", "shift")
SEVERITIES = (1, 2, 3, 4, 5)

# --- parameter tables (index = severity - 1) -----------------------------------------------------

# Noise standard deviation as a fraction of the data's scale r (hi - lo, else std of x). This is
# ImageNet-C's own Gaussian-noise table (for [0, 1] images). A smaller table (0.04 .. 0.12) was
# tried first, on the idea that 8x8 images break faster, but they do not: a small MLP on the
# digits (r = 1) lost about 1 point at 0.12, and an MLP on MNIST-1D (r = std) none. The same
# digits MLP measured 93 % clean and 91, 89, 78, 66 % at noise 0.1, 0.2, 0.3, 0.4 (MNIST-1D:
# 57 % clean, 51 % at 0.4), so with this table severity 5 clearly hurts without reaching chance.
NOISE_STD: tuple[float, ...] = (0.08, 0.12, 0.18, 0.26, 0.38)

# Gaussian blur sigma in pixels (images, along H and W) or samples (signals, along L).
# ImageNet-C's defocus/Gaussian blur reach sigma of several pixels on 224-pixel images; at 8x8 a
# sigma of 1.3 pixels already merges a digit's strokes, so the table stops there.
BLUR_SIGMA: tuple[float, ...] = (0.4, 0.6, 0.8, 1.0, 1.3)

# The kernel is cut at BLUR_TRUNCATE sigmas on each side: radius = int(truncate * sigma + 0.5),
# which is exactly scipy.ndimage.gaussian_filter's rule (and its default of 4), so the two agree.
BLUR_TRUNCATE = 4.0

# Contrast factor c in (x - mean) * c + mean, per sample and channel: ImageNet-C's own values.
CONTRAST_FACTOR: tuple[float, ...] = (0.4, 0.3, 0.2, 0.1, 0.05)

# Shift as a fraction f of the side (images; H and W separately) or length (signals); the offset
# is k = max(1, round_half_up(f * size)) pixels/samples. No ImageNet-C counterpart (its
# translations are in ImageNet-P); 5 % .. 25 % of the side spans "slightly off-centre" to "a
# quarter of the content pushed out". On 8x8 images this gives k = 1, 1, 1, 2, 2 and on 40-sample
# signals k = 2, 4, 6, 8, 10: a small side cannot resolve more than a few distinct shifts.
SHIFT_FRACTION: tuple[float, ...] = (0.05, 0.10, 0.15, 0.20, 0.25)

# The 8 image directions (dy, dx), one drawn per sample; a diagonal moves k_h rows and k_w
# columns. Positive dy/dx move the content down/right (towards larger indices).
_IMAGE_DIRECTIONS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


# --- the entry points ----------------------------------------------------------------------------


def corrupt(
    x: torch.Tensor,
    name: str,
    severity: int,
    *,
    lo: float | None = None,
    hi: float | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """``x`` corrupted by ``name`` at ``severity`` (1..5), clipped to [lo, hi] when given.

    ``x`` is (N, C, H, W) images or (N, C, L) signals of a floating dtype, in raw units; it is
    not modified. The result has ``x``'s shape, dtype and device (half-precision inputs are
    computed in float32 and cast back). ``lo``/``hi`` are the valid range of the data: with both
    given they set the noise scale (``hi - lo``), and either one clips the output; ``lo`` is
    also what a shift uncovers (otherwise the sample's edge value is repeated). Without both
    bounds the noise scale is the standard deviation of the whole of ``x``, so pass a batch
    rather than a single sample, or pass the bounds.

    The same ``seed`` draws the same noise and the same shift direction per sample at every
    severity, so going up in severity only makes the same change stronger.
    """
    _check_input(x)
    _check_name(name)
    i = _severity_index(severity)
    if lo is not None and hi is not None and not lo < hi:
        raise ValueError(f"lo must be below hi, got lo={lo} and hi={hi}")
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x

    if name == "gaussian_noise":
        out = add_gaussian_noise(xf, NOISE_STD[i] * _scale(xf, lo, hi), seed=seed)
    elif name == "blur":
        out = gaussian_blur(xf, BLUR_SIGMA[i])
    elif name == "contrast":
        out = reduce_contrast(xf, CONTRAST_FACTOR[i])
    else:  # shift
        offsets = shift_offsets(xf, SHIFT_FRACTION[i], seed=seed)
        out = shift_by(xf, offsets, fill=lo)

    if lo is not None or hi is not None:
        out = out.clamp(min=lo, max=hi)
    return out.to(x.dtype)


def corruption_curves(
    predict: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lo: float | None = None,
    hi: float | None = None,
    names: Sequence[str] = CORRUPTIONS,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, dict[str, list]]:
    """Accuracy of ``predict`` per corruption at severities 0 (clean) to 5.

    ``predict`` maps a batch of raw inputs to logits (B, K) (normalisation, if the model needs
    it, belongs inside ``predict``); the class is the argmax over the last axis. It is called
    under ``torch.no_grad`` in batches of ``batch_size``. Each corruption is applied to the whole
    of ``x`` at once, so the noise scale and the random draws do not depend on ``batch_size``,
    which only bounds ``predict``'s memory.

    Returns ``{name: {"severity": [0, 1, 2, 3, 4, 5], "accuracy": [a0, ..., a5]}}`` with plain
    floats in [0, 1]; ``a0`` is the clean accuracy, the same for every name.
    """
    _check_input(x)
    for name in names:
        _check_name(name)
    if len(x) == 0:
        raise ValueError("corruption_curves needs at least one sample, got an empty x")
    if y.shape != (len(x),):
        raise ValueError(f"y must be (N,) = ({len(x)},) class labels, got shape {tuple(y.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")

    clean = _accuracy(predict, x, y, batch_size)
    curves: dict[str, dict[str, list]] = {}
    for name in names:
        accs = [clean]
        for severity in SEVERITIES:
            xc = corrupt(x, name, severity, lo=lo, hi=hi, seed=seed)
            accs.append(_accuracy(predict, xc, y, batch_size))
        curves[name] = {"severity": [0, *SEVERITIES], "accuracy": accs}
    return curves


# --- the corruptions, usable on their own --------------------------------------------------------


def add_gaussian_noise(x: torch.Tensor, std: float, *, seed: int = 0) -> torch.Tensor:
    """``x`` plus N(0, std^2) noise drawn on the CPU from a generator seeded by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(x.shape, generator=g, dtype=x.dtype)
    return x + std * noise.to(x.device)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of each channel along H and W (images) or L (signals).

    The borders are extended by half-sample symmetric reflection (``d c b a | a b c d``), which
    is ``scipy.ndimage.gaussian_filter(..., mode="reflect", truncate=BLUR_TRUNCATE)`` applied
    over the spatial axes only (``sigma=0`` on N and C), the reference the tests compare with.
    Unlike torch's own ``"reflect"`` padding it repeats the edge value (a constant image stays
    constant up to its border) and works for kernels wider than the input.
    """
    radius = int(BLUR_TRUNCATE * sigma + 0.5)
    if radius == 0:
        return x.clone()
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(dtype=x.dtype, device=x.device)
    out = x
    for dim in range(2, x.dim()):
        out = _blur_along(out, kernel, dim)
    return out


def reduce_contrast(x: torch.Tensor, c: float) -> torch.Tensor:
    """``(x - mean) * c + mean`` with the mean of each sample and channel over its positions."""
    mean = x.mean(dim=tuple(range(2, x.dim())), keepdim=True)
    return (x - mean) * c + mean


def shift_offsets(x: torch.Tensor, fraction: float, *, seed: int = 0) -> torch.Tensor:
    """Per-sample offsets (N, D) for a shift of ``fraction`` of each spatial size, D = 1 or 2.

    The magnitude along an axis of size ``s`` is ``k = max(1, floor(fraction * s + 0.5))``. The
    direction is drawn per sample from a generator seeded by ``seed``: left or right for signals,
    one of the 8 compass directions for images (so a diagonal shift moves ``k_h`` rows and
    ``k_w`` columns). The draw does not depend on ``fraction``, so every severity shifts a
    sample the same way.
    """
    sizes = x.shape[2:]
    k = torch.tensor([max(1, math.floor(fraction * s + 0.5)) for s in sizes], dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    if len(sizes) == 1:
        directions = torch.tensor([[-1], [1]], dtype=torch.long)
    else:
        directions = torch.tensor(_IMAGE_DIRECTIONS, dtype=torch.long)
    pick = torch.randint(0, len(directions), (len(x),), generator=g)
    return directions[pick] * k


def shift_by(x: torch.Tensor, offsets: torch.Tensor, fill: float | None = None) -> torch.Tensor:
    """Translate each sample of ``x`` by its own integer offset, with no wrap-around.

    ``offsets`` is (N, D) integers, D = 1 for signals (samples along L) and 2 for images (rows,
    columns); a positive offset moves the content towards larger indices, so
    ``out[..., i] = x[..., i - offset]``. Positions uncovered by the move take ``fill`` when it
    is given, else the nearest value of the sample inside ``x`` (its edge, repeated).
    """
    d = x.dim() - 2
    if offsets.shape != (len(x), d):
        raise ValueError(
            f"offsets must be (N, {d}) = ({len(x)}, {d}) for x of shape {tuple(x.shape)}, "
            f"got {tuple(offsets.shape)}"
        )
    offsets = offsets.to(device=x.device, dtype=torch.long)
    out = x
    valid = torch.ones((), dtype=torch.bool, device=x.device)
    for axis in range(d):
        dim = 2 + axis
        size = x.shape[dim]
        source = torch.arange(size, device=x.device) - offsets[:, axis : axis + 1]  # (N, size)
        inside = (source >= 0) & (source < size)
        view = [len(x)] + [1] * (x.dim() - 1)
        view[dim] = size
        index = source.clamp(0, size - 1).view(view).expand(out.shape)
        out = torch.gather(out, dim, index)
        valid = valid & inside.view(view)
    if fill is not None:
        out = torch.where(valid, out, torch.full((), fill, dtype=x.dtype, device=x.device))
    return out


# --- helpers -------------------------------------------------------------------------------------


def _check_input(x: torch.Tensor) -> None:
    if x.dim() not in (3, 4) or not x.is_floating_point():
        raise ValueError(
            f"cannot corrupt a tensor of shape {tuple(x.shape)} and dtype {x.dtype}: corruptions "
            "need (N, C, L) signals or (N, C, H, W) images of a floating dtype"
        )


def _check_name(name: str) -> None:
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; valid names are {', '.join(CORRUPTIONS)}")


def _severity_index(severity: int) -> int:
    if isinstance(severity, bool) or not isinstance(severity, int) or severity not in SEVERITIES:
        raise ValueError(f"severity must be an integer from 1 to 5, got {severity!r}")
    return severity - 1


def _scale(x: torch.Tensor, lo: float | None, hi: float | None) -> float:
    """The data's scale: ``hi - lo`` when both are known, else the std of all of ``x``.

    A constant ``x`` (std 0) with no bounds falls back to 1, so noise still does something.
    """
    if lo is not None and hi is not None:
        return float(hi - lo)
    std = float(x.std()) if x.numel() > 1 else 0.0
    return std if std > 0 and math.isfinite(std) else 1.0


def _blur_along(x: torch.Tensor, kernel: torch.Tensor, dim: int) -> torch.Tensor:
    """Convolve every row of ``x`` along ``dim`` with the odd, symmetric 1-D ``kernel``."""
    radius = (len(kernel) - 1) // 2
    size = x.shape[dim]
    # Half-sample symmetric extension, periodic with period 2 * size, valid for any radius.
    pos = torch.arange(-radius, size + radius, device=x.device) % (2 * size)
    pos = torch.where(pos >= size, 2 * size - 1 - pos, pos)
    padded = x.movedim(dim, -1).index_select(-1, pos)  # (..., size + 2 * radius)
    lead = padded.shape[:-1]
    rows = padded.reshape(-1, 1, padded.shape[-1])
    blurred = F.conv1d(rows, kernel.view(1, 1, -1))  # symmetric kernel: no flip needed
    return blurred.reshape(*lead, size).movedim(-1, dim)


@torch.no_grad()
def _accuracy(
    predict: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
) -> float:
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = predict(x[start : start + batch_size])
        pred = logits.argmax(dim=-1).to(y.device)
        correct += int((pred == y[start : start + batch_size]).sum())
    return correct / len(x)
