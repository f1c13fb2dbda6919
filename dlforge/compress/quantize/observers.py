"""Calibration observers: they watch tensors and choose the range [min, max] to quantize.

- ``minmax``: the extremes seen (per tensor or per channel);
- ``moving_average``: exponential moving average of each batch's extremes;
- ``percentile``: the p-th and (100-p)-th percentiles, ignoring rare outliers;
- ``mse``: the clipping range that minimises the expected squared quantization error;
- ``entropy``: the threshold that minimises the KL divergence between the float and quantized
  distributions (the TensorRT calibrator's method).

The last three work from a streaming histogram over [-R, R]; when a batch exceeds R, R doubles
and neighbouring bins merge, which re-bins exactly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from dlforge.compress.quantize.qscheme import QuantSpec, compute_qparams, fake_quantize

OBSERVERS: dict[str, type[Observer]] = {}


class Observer(ABC):
    name = ""

    def __init__(self, spec: QuantSpec) -> None:
        self.spec = spec
        self.batches = 0

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        if cls.name:
            OBSERVERS[cls.name] = cls

    def _extremes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.detach().float()
        if self.spec.per_channel:
            x = x.transpose(0, self.spec.axis).reshape(x.shape[self.spec.axis], -1)
            return x.amin(1), x.amax(1)
        return x.min(), x.max()

    def update(self, x: torch.Tensor) -> None:
        if x.numel() == 0:
            return
        self._update(x.detach().float())
        self.batches += 1

    @abstractmethod
    def _update(self, x: torch.Tensor) -> None: ...

    @abstractmethod
    def range(self) -> tuple[torch.Tensor, torch.Tensor]: ...

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.batches == 0:
            raise ValueError(
                f"{self.name} observer has seen no data: calibrate with at least one batch"
            )
        return compute_qparams(*self.range(), self.spec)


class MinMaxObserver(Observer):
    name = "minmax"

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__(spec)
        self.min_val: torch.Tensor | None = None
        self.max_val: torch.Tensor | None = None

    def _update(self, x: torch.Tensor) -> None:
        lo, hi = self._extremes(x)
        if self.min_val is None or self.max_val is None:
            self.min_val, self.max_val = lo, hi
        else:
            self.min_val, self.max_val = (
                torch.minimum(self.min_val, lo),
                torch.maximum(self.max_val, hi),
            )

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.min_val is not None and self.max_val is not None
        return self.min_val, self.max_val


class MovingAverageMinMaxObserver(MinMaxObserver):
    name = "moving_average"

    def __init__(self, spec: QuantSpec, momentum: float = 0.1) -> None:
        super().__init__(spec)
        self.momentum = momentum

    def _update(self, x: torch.Tensor) -> None:
        lo, hi = self._extremes(x)
        if self.min_val is None or self.max_val is None:
            self.min_val, self.max_val = lo, hi
        else:
            self.min_val = self.min_val + self.momentum * (lo - self.min_val)
            self.max_val = self.max_val + self.momentum * (hi - self.max_val)


class HistogramObserver(Observer):
    """A per-tensor histogram over [-R, R] with ``bins`` bins (R doubles as needed)."""

    def __init__(self, spec: QuantSpec, bins: int = 2048) -> None:
        if spec.per_channel:
            raise ValueError(f"the {self.name} observer is per-tensor; use minmax for per-channel")
        super().__init__(spec)
        self.bins = bins
        self.hist = np.zeros(bins, dtype=np.float64)
        self.radius = 0.0
        self.min_seen, self.max_seen = float("inf"), float("-inf")

    def _update(self, x: torch.Tensor) -> None:
        values = x.flatten().numpy().astype(np.float64)
        lo, hi = float(values.min()), float(values.max())
        self.min_seen, self.max_seen = min(self.min_seen, lo), max(self.max_seen, hi)
        amax = max(abs(lo), abs(hi), 1e-12)
        if self.radius == 0.0:
            self.radius = amax
        while amax > self.radius:  # double the range: pairs of bins merge, centred in the new
            merged = self.hist.reshape(-1, 2).sum(axis=1)
            self.hist = np.zeros(self.bins)
            quarter = self.bins // 4
            self.hist[quarter : quarter + len(merged)] = merged
            self.radius *= 2
        counts, _ = np.histogram(values, bins=self.bins, range=(-self.radius, self.radius))
        self.hist += counts

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(-self.radius, self.radius, self.bins + 1)

    @property
    def centers(self) -> np.ndarray:
        e = self.edges
        return (e[:-1] + e[1:]) / 2

    def _clip(self, lo: float, hi: float) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor(max(lo, self.min_seen)), torch.tensor(min(hi, self.max_seen))


class PercentileObserver(HistogramObserver):
    name = "percentile"

    def __init__(self, spec: QuantSpec, percentile: float = 99.99, bins: int = 2048) -> None:
        super().__init__(spec, bins)
        self.percentile = percentile

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        cdf = np.cumsum(self.hist) / self.hist.sum()
        edges = self.edges
        lo = edges[np.searchsorted(cdf, 1 - self.percentile / 100)]
        hi = edges[min(int(np.searchsorted(cdf, self.percentile / 100)) + 1, self.bins)]
        return self._clip(float(lo), float(hi))


class MseObserver(HistogramObserver):
    name = "mse"

    def __init__(self, spec: QuantSpec, steps: int = 100, bins: int = 2048) -> None:
        super().__init__(spec, bins)
        self.steps = steps

    def expected_error(self, lo: float, hi: float) -> float:
        """Squared quantization error summed over the histogram, for the range [lo, hi]."""
        scale, zp = compute_qparams(torch.tensor(lo), torch.tensor(hi), self.spec)
        c = torch.from_numpy(self.centers).float()
        err = (c - fake_quantize(c, scale, zp, self.spec.qmin, self.spec.qmax)).double() ** 2
        return float((err.numpy() * self.hist).sum())

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        best = (float("inf"), self.min_seen, self.max_seen)
        for alpha in np.linspace(1.0 / self.steps, 1.0, self.steps):
            lo, hi = self.min_seen * alpha, self.max_seen * alpha
            best = min(best, (self.expected_error(lo, hi), lo, hi))
        return self._clip(best[1], best[2])


class EntropyObserver(HistogramObserver):
    name = "entropy"

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        half = self.bins // 2
        # Fold to a histogram of |x| over [0, R].
        absolute = self.hist[half:] + self.hist[:half][::-1]
        signed_data = self.min_seen < 0
        levels = (self.spec.qmax - self.spec.qmin + 1) // (2 if signed_data else 1)
        threshold_bin = kl_threshold(absolute, levels)
        t = threshold_bin * self.radius / half
        return self._clip(-t if signed_data else 0.0, t)


def kl_threshold(hist: np.ndarray, levels: int) -> int:
    """Number of leading bins whose clipped distribution, quantized to ``levels`` levels, keeps
    the smallest KL divergence to the original (Migacz, "8-bit inference with TensorRT", 2017)."""
    n = len(hist)
    if n <= levels or hist[levels:].sum() == 0:
        last = int(np.flatnonzero(hist)[-1]) + 1 if hist.any() else n
        return max(last, 1)
    best_i, best_kl = n, float("inf")
    for i in range(levels, n + 1):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()  # outliers clipped into the last bin
        chunks = np.array_split(hist[:i], levels)
        q = np.concatenate([
            np.where(c > 0, c.sum() / max(np.count_nonzero(c), 1), 0.0) for c in chunks
        ])  # fmt: skip
        mask = p > 0
        ps, qs = p / p.sum(), q / max(q.sum(), 1e-300)
        kl = float(np.sum(ps[mask] * np.log(ps[mask] / np.maximum(qs[mask], 1e-12))))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return best_i


def make_observer(name: str, spec: QuantSpec) -> Observer:
    if name not in OBSERVERS:
        raise ValueError(f"unknown observer '{name}'; choose one of {sorted(OBSERVERS)}")
    return OBSERVERS[name](spec)
