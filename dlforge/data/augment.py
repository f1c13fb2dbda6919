"""Training-batch augmentation: images (kornia), 1-D signals and tables (ours), mixup/cutmix.

``BatchAugment(cfg, num_classes)`` is called on a training batch ``(x, y)`` and returns the
augmented batch; with mixing on, ``y`` becomes soft targets (N, K) that cross-entropy takes as
they are. Its random draws come from a generator seeded by ``(seed, epoch, batch index)``, never
from the global one: the same run draws the same augmentations, a resume at an epoch boundary
continues exactly, and the model's own randomness (dropout) is unchanged by switching
augmentation on or off. Inputs are normalised, so intensity changes are in standard deviations
and erased regions are filled with the mean (0).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from dlforge.data.config import AugmentConfig, ImageAugmentConfig, MixConfig, SignalAugmentConfig


def seeded_generator(*parts: int) -> torch.Generator:
    """A CPU generator whose seed mixes ``parts`` (a hash that does not depend on the process)."""
    seed = 0x9E3779B97F4A7C15
    for p in parts:
        seed = (seed ^ (p + 0x9E3779B9 + (seed << 6) + (seed >> 2))) & (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


# --- images ------------------------------------------------------------------------------------


def augment_images(x: torch.Tensor, cfg: ImageAugmentConfig, g: torch.Generator) -> torch.Tensor:
    """(N, C, H, W) -> the same shape: geometry through kornia, intensity and erasing ours."""
    x = _geometry(x, cfg, g)
    n = len(x)
    if cfg.brightness > 0:
        x = x + _uniform(n, -cfg.brightness, cfg.brightness, g).view(n, 1, 1, 1)
    if cfg.contrast > 0:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = mean + (x - mean) * _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, g).view(n, 1, 1, 1)
    if cfg.erasing > 0:
        x = _erase(x, cfg.erasing, g)
    return x


def _geometry(x: torch.Tensor, cfg: ImageAugmentConfig, g: torch.Generator) -> torch.Tensor:
    import kornia.augmentation as K

    ops: list[torch.nn.Module] = []
    h, w = x.shape[-2:]
    if cfg.crop_padding:
        ops.append(K.RandomCrop((h, w), padding=cfg.crop_padding, p=1.0))
    if cfg.hflip:
        ops.append(K.RandomHorizontalFlip(p=cfg.hflip))
    if cfg.vflip:
        ops.append(K.RandomVerticalFlip(p=cfg.vflip))
    if cfg.rotation or cfg.translate or cfg.scale:
        ops.append(
            K.RandomAffine(
                degrees=cfg.rotation,
                translate=(cfg.translate, cfg.translate) if cfg.translate else None,
                scale=(1 - cfg.scale, 1 + cfg.scale) if cfg.scale else None,
                p=1.0,
            )
        )
    if not ops:
        return x
    # kornia draws from torch's global generator: run it on a fork seeded from ours, so the
    # global stream (dropout, shuffling) is left exactly as it was.
    with torch.random.fork_rng(devices=[]):
        # The CPU generator only (torch.manual_seed would reseed every CUDA device too).
        torch.default_generator.manual_seed(int(torch.randint(0, 2**62, (1,), generator=g)))
        for op in ops:
            x = op(x)
    return x


def _erase(x: torch.Tensor, prob: float, g: torch.Generator) -> torch.Tensor:
    """Random erasing (Zhong et al., 2020): per image with ``prob``, a rectangle of 2-33% of
    the area and aspect ratio 0.3-3.3, set to the mean (0 after normalisation)."""
    n, _, h, w = x.shape
    x = x.clone()
    chosen = torch.rand(n, generator=g) < prob
    area = _uniform(n, 0.02, 0.33, g) * h * w
    ratio = torch.exp(_uniform(n, math.log(0.3), math.log(3.3), g))
    eh = (area * ratio).sqrt().round().clamp(1, h).long()
    ew = (area / ratio).sqrt().round().clamp(1, w).long()
    top = (torch.rand(n, generator=g) * (h - eh + 1)).long()
    left = (torch.rand(n, generator=g) * (w - ew + 1)).long()
    for i in torch.nonzero(chosen).flatten().tolist():
        x[i, :, top[i] : top[i] + eh[i], left[i] : left[i] + ew[i]] = 0.0
    return x


# --- 1-D signals ---------------------------------------------------------------------------------


def augment_signals(x: torch.Tensor, cfg: SignalAugmentConfig, g: torch.Generator) -> torch.Tensor:
    """(N, C, L) -> the same shape: time warp, circular shift, amplitude scaling, noise."""
    n, _, length = x.shape
    if cfg.time_warp > 0:
        x = time_warp(x, _uniform(n, 1 - cfg.time_warp, 1 + cfg.time_warp, g))
    if cfg.shift > 0:
        shifts = torch.randint(-cfg.shift, cfg.shift + 1, (n,), generator=g)
        index = (torch.arange(length).view(1, -1) - shifts.view(-1, 1)) % length
        x = torch.gather(x, 2, index.unsqueeze(1).expand_as(x))
    if cfg.scale > 0:
        x = x * _uniform(n, 1 - cfg.scale, 1 + cfg.scale, g).view(n, 1, 1)
    if cfg.noise > 0:
        x = x + cfg.noise * torch.randn(x.shape, generator=g)
    return x


def time_warp(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Stretch each signal by its factor (linear interpolation) around its centre, keeping the
    length: > 1 zooms in (the ends fall off), < 1 zooms out (the ends repeat the edge value)."""
    n, _, length = x.shape
    centre = (length - 1) / 2
    pos = centre + (torch.arange(length, dtype=x.dtype).view(1, -1) - centre) / factors.view(-1, 1)
    pos = pos.clamp(0, length - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=length - 1)
    frac = (pos - lo).unsqueeze(1)
    gather = lambda idx: torch.gather(x, 2, idx.unsqueeze(1).expand(n, x.shape[1], length))  # noqa: E731
    return gather(lo) * (1 - frac) + gather(hi) * frac


# --- mixing --------------------------------------------------------------------------------------


def mix_batch(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, cfg: MixConfig, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or cutmix on a batch: inputs combined with a shuffled copy, soft targets weighted
    by the share each image contributes. Returns ``(x, soft_y)``; unmixed batches get one-hot
    targets, so a run's targets are always (N, K)."""
    soft = F.one_hot(y, num_classes).float() if y.dim() == 1 else y.float()
    use_mix = cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0
    if not use_mix or float(torch.rand(1, generator=g)) >= cfg.prob:
        return x, soft
    cutmix = cfg.cutmix_alpha > 0 and (
        cfg.mixup_alpha == 0 or float(torch.rand(1, generator=g)) < cfg.switch_prob
    )
    alpha = cfg.cutmix_alpha if cutmix else cfg.mixup_alpha
    lam = _beta(alpha, g)
    perm = torch.randperm(len(x), generator=g)
    if cutmix and x.dim() >= 3:
        x, lam = _cut_and_paste(x, perm, lam, g)
    else:
        x = lam * x + (1 - lam) * x[perm]
    return x, lam * soft + (1 - lam) * soft[perm]


def _beta(alpha: float, g: torch.Generator) -> float:
    """A Beta(alpha, alpha) draw seeded from ``g`` (torch's Beta sampler takes no generator)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def _cut_and_paste(
    x: torch.Tensor, perm: torch.Tensor, lam: float, g: torch.Generator
) -> tuple[torch.Tensor, float]:
    """Paste a box (a segment for 1-D signals) of area share 1 - lam from the shuffled batch;
    returns the inputs and lam corrected to the box actually pasted."""
    sizes = x.shape[2:]
    cut = math.sqrt(1 - lam) if len(sizes) == 2 else 1 - lam
    x = x.clone()
    region = []
    for size in sizes:
        length = round(size * cut)
        centre = int(torch.randint(0, size, (1,), generator=g))
        lo, hi = max(centre - length // 2, 0), min(centre + length - length // 2, size)
        region.append(slice(lo, hi))
    x[(slice(None), slice(None), *region)] = x[perm][(slice(None), slice(None), *region)]
    pasted = math.prod(r.stop - r.start for r in region) / math.prod(sizes)
    return x, 1 - pasted


# --- the whole pipeline ------------------------------------------------------------------------


class BatchAugment:
    """Augments training batches by input rank: images (N,C,H,W), signals (N,C,L), tables (N,F);
    then mixes. ``set_epoch`` and the batch counter seed each batch's draws."""

    def __init__(self, cfg: AugmentConfig, num_classes: int) -> None:
        self.cfg, self.num_classes = cfg, num_classes
        self.epoch, self.rank, self.batch = 0, 0, 0

    @property
    def active(self) -> bool:
        c = self.cfg
        return (
            any(getattr(c.image, f) for f in vars(c.image))
            or any(getattr(c.signal, f) for f in vars(c.signal))
            or c.table_noise > 0
            or c.mix.mixup_alpha > 0
            or c.mix.cutmix_alpha > 0
        )

    def set_epoch(self, epoch: int, rank: int = 0) -> None:
        self.epoch, self.rank, self.batch = epoch, rank, 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = seeded_generator(self.cfg.seed, self.epoch, self.rank, self.batch)
        self.batch += 1
        device = x.device
        x = x.cpu()  # the draws happen on the CPU generator; the ops are cheap at these sizes
        if not x.is_floating_point():  # token ids: nothing here applies to them
            return x.to(device), y
        if x.dim() == 4:
            x = augment_images(x, self.cfg.image, g)
        elif x.dim() == 3:
            x = augment_signals(x, self.cfg.signal, g)
        elif x.dim() == 2 and self.cfg.table_noise > 0:
            x = x + self.cfg.table_noise * torch.randn(x.shape, generator=g)
        if self.cfg.mix.mixup_alpha > 0 or self.cfg.mix.cutmix_alpha > 0:
            x, y = mix_batch(x, y.cpu(), self.num_classes, self.cfg.mix, g)
            y = y.to(device)
        return x.contiguous().to(device), y
