"""How one tensor is quantized: bits, symmetric or affine, signed or not, per tensor or channel."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized."""

    bits: int = 8
    symmetric: bool = True
    signed: bool = True
    per_channel: bool = False
    axis: int = 0  # channel axis when per_channel

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 8:
            raise ValueError(f"bits must be 2..8, got {self.bits}")

    @property
    def qmin(self) -> int:
        if not self.signed:
            return 0
        half = 2 ** (self.bits - 1)
        return -(half - 1) if self.symmetric else -half

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1
