"""ONNX Runtime sessions for exported models, opened with errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dlforge.config import DlforgeError


class ModelFileError(DlforgeError, ValueError):
    """An ONNX file is missing, truncated or not a valid model; the message names it."""


def check_onnx_file(path: str | Path) -> Path:
    """Refuse, naming ``path``, a file that is missing or is not a well-formed ONNX model."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"ONNX file not found: {p}")
    try:
        onnx.checker.check_model(str(p))
    except Exception as exc:  # protobuf decode errors, checker errors, I/O errors
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ModelFileError(f"{p} is not a valid ONNX model ({reason})") from None
    return p


def open_session(path: str | Path, options: Any = None) -> Any:
    """An ONNX Runtime CPU ``InferenceSession`` for ``path``; a bad file is a ModelFileError."""
    import onnxruntime as ort

    p = check_onnx_file(path)
    try:
        return ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # a graph the checker accepts but ORT cannot run
        reason = " ".join(str(exc).split())[:200]
        raise ModelFileError(f"ONNX Runtime cannot load {p} ({reason})") from None


class OrtModel:
    """An ONNX Runtime CPU session; ``threads`` sets its intra-op thread pool."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.path = Path(path)
        self.session = open_session(path, options)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})
        return np.asarray(out[0])

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return np.concatenate([self(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
