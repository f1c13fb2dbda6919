"""ONNX Runtime sessions for exported models, opened with errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


INT8_KERNELS = {"MatMulInteger", "MatMulIntegerToFloat", "ConvInteger", "QGemm", "QAttention",
                "DynamicQuantizeMatMul", "QEmbedLayerNormalization"}  # fmt: skip
# Ops that only move, index or convert values: not where the arithmetic is.
DATA_MOVEMENT = {"Reshape", "Transpose", "Shape", "Gather", "Concat", "Slice", "Unsqueeze",
                 "Squeeze", "Expand", "Where", "Equal", "Constant", "ConstantOfShape", "Cast",
                 "Identity", "Flatten", "QuantizeLinear", "DequantizeLinear", "MaxPool",
                 "ReorderInput", "ReorderOutput", "Range", "Split", "Tile"}  # fmt: skip


def kernels(path: str | Path) -> dict[str, dict[str, int]]:
    """Which compute kernels ONNX Runtime runs ``path`` with after its graph optimisations:
    ``{"int8": {op: count}, "float": {op: count}}``, data movement left out. This is how a
    QDQ file is checked: a DequantizeLinear that ORT cannot fuse leaves its op in float."""
    import tempfile
    from collections import Counter

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        open_session(path, options)
        ops = Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    int8 = {op: n for op, n in ops.items() if op.startswith("QLinear") or op in INT8_KERNELS}
    other = {op: n for op, n in ops.items() if op not in int8 and op not in DATA_MOVEMENT}
    return {"int8": dict(sorted(int8.items())), "float": dict(sorted(other.items()))}
