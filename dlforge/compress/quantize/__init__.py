"""Quantization: the arithmetic, calibration observers, BN folding, fake-quantized models (PTQ).

``ptq(model, calibration_batches, QuantConfig())`` returns a ``QuantPlan`` whose model exports to
an ONNX QDQ graph (``dlforge.deploy.export_onnx``) that ONNX Runtime runs with int8 kernels.
"""

from dlforge.compress.quantize.fakequant import (
    ActQuant,
    QuantConfig,
    QuantLayer,
    QuantPlan,
    act_quantizers,
    calibrate,
    prepare,
    ptq,
)
from dlforge.compress.quantize.fold import QuantizationError, fold_batch_norm
from dlforge.compress.quantize.observers import OBSERVERS, Observer, make_observer
from dlforge.compress.quantize.qscheme import (
    QuantSpec,
    compute_qparams,
    dequantize,
    fake_quantize,
    fake_quantize_lsq,
    fake_quantize_ste,
    quantize,
)

__all__ = [
    "OBSERVERS",
    "ActQuant",
    "Observer",
    "QuantConfig",
    "QuantLayer",
    "QuantPlan",
    "QuantSpec",
    "QuantizationError",
    "act_quantizers",
    "calibrate",
    "compute_qparams",
    "dequantize",
    "fake_quantize",
    "fake_quantize_lsq",
    "fake_quantize_ste",
    "fold_batch_norm",
    "make_observer",
    "prepare",
    "ptq",
    "quantize",
]
