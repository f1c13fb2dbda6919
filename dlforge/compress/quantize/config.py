"""Quantization settings (no torch here: loading a recipe stays instant)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dlforge.compress.quantize.qspec import QuantSpec
from dlforge.config import Config, check


@dataclass
class QuantConfig(Config):
    weight_bits: int = 8
    activation_bits: int = 8
    weight_scheme: Literal["symmetric", "asymmetric"] = "symmetric"
    activation_scheme: Literal["asymmetric", "symmetric"] = "asymmetric"
    # uint8 activations: x86 ORT kernels are U8S8 (uint8 x int8); signed int8 left half the
    # convs in float in our measurements (BENCHMARKS.md).
    activation_signed: bool = False
    granularity: Literal["per_channel", "per_tensor"] = "per_channel"  # for weights
    # "auto": try the calibrators below and keep the one with the best validation accuracy
    observer: Literal["minmax", "moving_average", "percentile", "mse", "entropy", "auto"] = "minmax"
    calibration_batches: int = 16
    learn_step_size: bool = False  # QAT: LSQ weight scales (Esser et al., 2020)
    # Quantize the model's output (logits) too, as ORT's quantize_static does, so ORT can run
    # the last Gemm as QGemm. Off by default: it cost accuracy resolution and gained no
    # measurable speed on our models (BENCHMARKS.md).
    quantize_output: bool = False
    skip: list[str] = field(default_factory=list)  # layer names to keep in float
    # Leave layers the quantizer cannot handle (e.g. nn.MultiheadAttention with add_bias_kv)
    # in float and list them, instead of refusing the model.
    skip_unsupported: bool = False

    def validate(self) -> None:
        for key in ("weight_bits", "activation_bits"):
            check(2 <= getattr(self, key) <= 8, key, getattr(self, key), "must be in 2..8")
        check(self.calibration_batches >= 1, "calibration_batches", self.calibration_batches,
              "must be >= 1")  # fmt: skip

    def weight_spec(self) -> QuantSpec:
        return QuantSpec(
            bits=self.weight_bits,
            symmetric=self.weight_scheme == "symmetric",
            signed=True,
            per_channel=self.granularity == "per_channel",
            axis=0,
        )

    def activation_spec(self) -> QuantSpec:
        return QuantSpec(
            bits=self.activation_bits,
            symmetric=self.activation_scheme == "symmetric",
            signed=self.activation_signed,
        )
