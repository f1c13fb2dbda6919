"""Deployment: ONNX export (float and QDQ int8), inference engines (ONNX Runtime, OpenVINO),
sessions with the stored preprocessing, the benchmark harness, the HTTP server and its client."""

from typing import TYPE_CHECKING

from dlforge._lazy import lazy_exports

if TYPE_CHECKING:
    from dlforge.deploy.backends import OpenVinoModel, OrtModel, open_model
    from dlforge.deploy.client import Client, ServerError
    from dlforge.deploy.config import BenchConfig, ServeConfig
    from dlforge.deploy.export import export_onnx
    from dlforge.deploy.runtime import ModelFileError
    from dlforge.deploy.session import InputError, Session

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "backends": ["OpenVinoModel", "OrtModel", "open_model"],
        "client": ["Client", "ServerError"],
        "config": ["BenchConfig", "ServeConfig"],
        "export": ["export_onnx"],
        "runtime": ["ModelFileError"],
        "session": ["InputError", "Session"],
    },
)
