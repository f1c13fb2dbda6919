"""What the run ran on: versions, device, threads, CPU features."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

import torch

from dlforge.train.precision import cpu_has_native_bf16


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": {
            name: _version(name)
            for name in ("dlforge", "torch", "numpy", "scikit-learn", "safetensors", "mnist1d")
        },
    }
