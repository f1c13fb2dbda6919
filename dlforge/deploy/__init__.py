"""Deployment: ONNX export (float and QDQ int8), ONNX Runtime sessions, the benchmark harness."""

from typing import TYPE_CHECKING

from dlforge._lazy import lazy_exports

if TYPE_CHECKING:
    from dlforge.deploy.config import BenchConfig
    from dlforge.deploy.export import export_onnx
    from dlforge.deploy.runtime import ModelFileError, OrtModel
    from dlforge.deploy.session import Session

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "config": ["BenchConfig"],
        "export": ["export_onnx"],
        "runtime": ["ModelFileError", "OrtModel"],
        "session": ["Session"],
    },
)
