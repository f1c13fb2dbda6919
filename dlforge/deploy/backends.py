"""Inference engines for an exported ONNX file: ONNX Runtime (the default) and OpenVINO.

``open_model(path, backend, precision, threads)`` returns an ``InferenceModel``: call it on a
float32 batch, read ``backend`` and ``precision`` to know what actually ran. OpenVINO runs the
same fp32 and QDQ int8 files as ONNX Runtime; on CPUs with bf16 it runs an "fp32" model in bf16
unless told otherwise, so the precision it compiled with is read back from the compiled model
and reported, never assumed.

Precisions: ``int8`` (a QDQ file), ``fp32``, and ``bf16`` (the fp32 file run in bf16: OpenVINO
only), and ``auto`` (OpenVINO only: whatever it picks on this CPU, reported as such).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from dlforge.config import DlforgeError
from dlforge.deploy.runtime import ModelFileError, check_onnx_file, open_session

BackendName = Literal["ort", "openvino"]
BACKENDS: tuple[str, ...] = ("ort", "openvino")
PRECISIONS: dict[str, tuple[str, ...]] = {
    "ort": ("fp32", "int8"),
    "openvino": ("fp32", "int8", "bf16", "auto"),
}
BACKEND_TITLES = {"ort": "ONNX Runtime", "openvino": "OpenVINO"}


class BackendError(DlforgeError, ValueError):
    """A backend or precision that does not exist, or that this machine cannot run."""


class InferenceModel(Protocol):
    backend: str
    precision: str  # what runs, as the engine reports it ("int8", "fp32", "bf16")
    path: Path
    input_name: str
    output_name: str
    input_shape: tuple[int | None, ...]  # the file's input shape; None where it is dynamic

    def __call__(self, x: np.ndarray) -> np.ndarray: ...


def check_backend(backend: str, precision: str) -> None:
    """Refuse an unknown backend or a precision the backend does not offer, naming both."""
    if backend not in BACKENDS:
        raise BackendError(f"backend '{backend}' is unknown; choose one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS[backend]:
        raise BackendError(
            f"precision '{precision}' is not offered by backend '{backend}'; "
            f"choose one of {', '.join(PRECISIONS[backend])}"
        )


def file_for(precision: str) -> str:
    """The exported file a precision runs: int8 the QDQ file, the others the fp32 one."""
    return "model_int8.onnx" if precision == "int8" else "model_fp32.onnx"


def open_model(
    path: str | Path,
    backend: str = "ort",
    precision: str = "fp32",
    threads: int | None = None,
) -> InferenceModel:
    """An engine running ``path``. ``precision`` says what the file holds (``int8`` for a QDQ
    file) or, for OpenVINO, what to run an fp32 file in (``fp32``, ``bf16`` or ``auto``)."""
    check_backend(backend, precision)
    if backend == "openvino":
        return OpenVinoModel(path, precision, threads)
    return OrtModel(path, precision, threads)


def _dims(shape: Any) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else None for d in shape)


class OrtModel:
    """An ONNX Runtime CPU session; ``threads`` sets its intra-op pool (workers do not spin
    between calls, so an idle server does not burn a core)."""

    backend = "ort"

    def __init__(self, path: str | Path, precision: str = "fp32", threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = Path(path)
        self.precision = precision
        self.session = open_session(path, options)
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        self.input_shape = _dims(inp.shape)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})
        return np.asarray(out[0])

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return np.concatenate([self(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


OV_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: the float parts stay f32


class OpenVinoModel:
    """The same ONNX file compiled by OpenVINO for the CPU.

    ``auto`` leaves the inference precision to OpenVINO (bf16 on CPUs that have it) and reports
    the one it chose; the others set it. One infer request serves the calls, and the batch
    dimension stays dynamic as exported."""

    backend = "openvino"

    def __init__(self, path: str | Path, precision: str = "fp32", threads: int | None = None):
        try:
            import openvino as ov
        except ImportError:  # pragma: no cover - openvino is a dependency
            raise BackendError("backend 'openvino' needs the openvino package") from None
        p = check_onnx_file(path)
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if precision in OV_HINTS:
            config["INFERENCE_PRECISION_HINT"] = OV_HINTS[precision]
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        core = ov.Core()
        try:
            model = core.read_model(str(p))
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:  # a graph ORT accepts but OpenVINO cannot compile
            reason = " ".join(str(exc).split())[:200]
            raise ModelFileError(f"OpenVINO cannot compile {p} ({reason})") from None
        self.path = p
        self.request = self.compiled.create_infer_request()
        inp, out = self.compiled.inputs[0], self.compiled.outputs[0]
        self.input_name, self.output_name = inp.get_any_name(), out.get_any_name()
        self.input_shape = tuple(
            None if d.is_dynamic else d.get_length() for d in inp.get_partial_shape()
        )
        chosen = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        float_precision = "bf16" if "bf" in chosen else "fp16" if "16" in chosen else "fp32"
        self.precision = "int8" if precision == "int8" else float_precision
        self.float_precision = float_precision  # what the float parts of an int8 file run in

    def __call__(self, x: np.ndarray) -> np.ndarray:
        result = self.request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        return np.array(result[self.compiled.outputs[0]])  # a copy: the request reuses its buffer

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return np.concatenate([self(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
