"""Deployment: ONNX export (float and QDQ int8) and ONNX Runtime sessions."""

from dlforge.deploy.export import export_onnx
from dlforge.deploy.runtime import OrtModel
from dlforge.deploy.session import Session

__all__ = ["OrtModel", "Session", "export_onnx"]
