"""Choosing the compute precision and memory format for a device.

Mixed precision here means: compute in bf16/fp16 under autocast while the weights and the
optimizer stay in fp32 (the "master weights"); fp16 also needs loss scaling (a GradScaler) so
small gradients do not flush to zero. bf16 has fp32's exponent range and needs no scaler.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import cache

import torch
from torch import nn


@dataclass(frozen=True)
class Precision:
    name: str  # "fp32", "bf16" or "fp16"
    device_type: str  # "cpu" or "cuda"

    @property
    def dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        # Only fp16 needs loss scaling; a disabled scaler is a pass-through.
        return torch.amp.GradScaler(self.device_type, enabled=self.name == "fp16")


@cache
def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX512-BF16 or AMX), so autocast pays off."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        flags = ""
    if flags:  # Linux: trust the flags; oneDNN's own probe also says yes for emulated bf16
        return "avx512_bf16" in flags or "amx_bf16" in flags
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(probe()) if callable(probe) else False


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """'auto': bf16 on CUDA that supports it, else fp16 on CUDA; bf16 on CPUs with native bf16."""
    kind = device.type
    if requested != "auto":
        if requested == "fp16" and kind == "cpu":
            raise ValueError("fp16 training on CPU is not supported: use bf16 or fp32")
        if requested == "bf16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("this GPU has no bf16 support: use fp16 or fp32")
        return Precision(requested, kind)
    if kind == "cuda":
        return Precision("bf16" if torch.cuda.is_bf16_supported() else "fp16", kind)
    if kind == "cpu" and cpu_has_native_bf16():
        return Precision("bf16", kind)
    return Precision("fp32", kind)


def has_conv2d(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def resolve_channels_last(requested: bool | str, model: nn.Module) -> bool:
    """'auto': on for 2-D conv nets (NHWC lets oneDNN/cuDNN skip layout conversions)."""
    if requested == "auto":
        return has_conv2d(model)
    return bool(requested)
