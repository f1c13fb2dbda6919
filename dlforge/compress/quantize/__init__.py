"""Quantization: the arithmetic, calibration observers, BN folding, fake-quantized models (PTQ).

``ptq(model, calibration_batches, QuantConfig())`` returns a ``QuantPlan`` whose model exports to
an ONNX QDQ graph (``dlforge.deploy.export_onnx``) that ONNX Runtime runs with int8 kernels.
"""

from typing import TYPE_CHECKING

from dlforge._lazy import lazy_exports

if TYPE_CHECKING:
    from dlforge.compress.quantize.config import QuantConfig
    from dlforge.compress.quantize.fakequant import (
        ActQuant,
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
        compute_qparams,
        dequantize,
        fake_quantize,
        fake_quantize_lsq,
        fake_quantize_ste,
        quantize,
    )
    from dlforge.compress.quantize.qspec import QuantSpec

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "config": ["QuantConfig"],
        "fakequant": [
            "ActQuant",
            "QuantLayer",
            "QuantPlan",
            "act_quantizers",
            "calibrate",
            "prepare",
            "ptq",
        ],
        "fold": ["QuantizationError", "fold_batch_norm"],
        "observers": ["OBSERVERS", "Observer", "make_observer"],
        "qscheme": [
            "compute_qparams",
            "dequantize",
            "fake_quantize",
            "fake_quantize_lsq",
            "fake_quantize_ste",
            "quantize",
        ],
        "qspec": ["QuantSpec"],
    },
)
