"""The quantize and bench stages of a run: compose PTQ, export, ONNX Runtime and the harness."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from dlforge.compress.quantize import QuantConfig, ptq
from dlforge.compress.quantize.codebook import CodebookConfig, share_weights
from dlforge.compress.quantize.fakequant import auto_ptq, qat
from dlforge.compress.quantize.sensitivity import mixed_precision, weight_layers
from dlforge.data import DataBundle
from dlforge.deploy.bench import (
    BenchConfig,
    Variant,
    add_ratios,
    benchmark,
    ort_runner,
    torch_runner,
)
from dlforge.deploy.export import export_onnx
from dlforge.deploy.session import PREPROCESSING_FILE
from dlforge.train import OptimizerConfig, TrainConfig, Trainer
from dlforge.train.checkpoint import atomic_write_json
from dlforge.train.precision import cpu_has_native_bf16


@dataclass
class QuantizeStageConfig(QuantConfig):
    enabled: bool = False
    method: Literal["ptq", "qat"] = "ptq"
    qat_epochs: int = 3
    qat_lr: float = 1e-4
    freeze_bn_epoch: int | None = 1  # QAT: BN statistics frozen from this epoch (0-based)
    sensitivity: bool = False  # per-layer weight sensitivity and a mixed-precision choice
    mixed_precision_max_drop: float = 0.01  # accuracy budget (on the val split) for that choice
    mixed_precision_max_bytes: float | None = None  # or a weight-size budget instead
    sensitivity_bits: list[int] = field(default_factory=lambda: [8, 4, 2])
    codebook_bits: int | None = None  # also report k-means weight sharing at this many bits
    codebook_epochs: int = 2  # centroid fine-tuning epochs


@dataclass
class BenchStageConfig(BenchConfig):
    enabled: bool = False


def plain_copy(model: nn.Module) -> nn.Module:
    """An eval-mode CPU copy in the default memory format (the trainer may leave NHWC)."""
    out: nn.Module = copy.deepcopy(model).cpu().eval()
    return out.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def quantize_stage(
    model: nn.Module, data: DataBundle, cfg: QuantConfig, out_dir: Path
) -> dict[str, Any]:
    """PTQ on training batches, export fp32 and int8 ONNX, and score all three on the test split."""
    model = plain_copy(model)
    x_train = data.train[0]
    calib = [
        x_train[i : i + 64] for i in range(0, min(len(x_train), 64 * cfg.calibration_batches), 64)
    ]
    x, y = data.test
    labels = y.numpy()
    xv, yv = data.val

    def evaluate(m: nn.Module) -> float:
        with torch.no_grad():
            return _accuracy(m.eval()(xv).numpy(), yv.numpy())

    result: dict[str, Any] = {}
    stage = cfg if isinstance(cfg, QuantizeStageConfig) else QuantizeStageConfig(**vars(cfg))
    if stage.method == "qat":
        train = TrainConfig(
            epochs=stage.qat_epochs,
            progress=False,
            optimizer=OptimizerConfig(name="adamw", lr=stage.qat_lr),
        )
        loader = data.loader("train", 64, True, torch.Generator().manual_seed(0))
        plan = qat(model, loader, None, cfg, train, stage.freeze_bn_epoch)
    elif cfg.observer == "auto":
        plan, result["observer_search"] = auto_ptq(model, calib, evaluate, cfg)
    else:
        plan = ptq(model, calib, cfg)
    with torch.no_grad():
        fp32_logits = model(x).numpy()
        fq_logits = plan.model(x).numpy()
    fp32_path = export_onnx(model, x[:1], out_dir / "model_fp32.onnx")
    preprocessing = {**data.preprocessing, "class_names": data.class_names}
    atomic_write_json(out_dir / PREPROCESSING_FILE, preprocessing)
    int8_path = export_onnx(plan.model, x[:1], out_dir / "model_int8.onnx")
    ort_logits = ort_runner(int8_path, threads=torch.get_num_threads())(
        x.numpy().astype(np.float32)
    )
    if stage.sensitivity:
        budget = (
            {"max_bytes": stage.mixed_precision_max_bytes}
            if stage.mixed_precision_max_bytes is not None
            else {"max_drop": stage.mixed_precision_max_drop}
        )
        mixed = mixed_precision(model, evaluate, bits_options=stage.sensitivity_bits, **budget)
        test_acc = _accuracy(mixed.model(x).detach().numpy(), labels)
        result["mixed_precision"] = {**mixed.summary(), "test_accuracy": test_acc}
    if stage.codebook_bits is not None:
        result["codebook"] = codebook_variant(
            model, data, stage.codebook_bits, stage.codebook_epochs
        )
    return result | {
        "config": {k: v for k, v in vars(cfg).items() if k != "enabled"},
        "method": stage.method,
        "observer": plan.config.observer,
        "quantized_layers": plan.quantized,
        "float_layers": plan.float_layers,
        "folded_batch_norms": plan.folded_bn,
        "activation_quantizers": len(plan.activation_quantizers),
        "accuracy": {
            "fp32": _accuracy(fp32_logits, labels),
            "fake_quant": _accuracy(fq_logits, labels),
            "onnxruntime_int8": _accuracy(ort_logits, labels),
        },
        "ort_vs_fake_quant_top1_agreement": float(
            (ort_logits.argmax(1) == fq_logits.argmax(1)).mean()
        ),
        "ort_vs_fake_quant_max_abs_logit_diff": float(np.abs(ort_logits - fq_logits).max()),
        "files": {"fp32": str(fp32_path), "int8": str(int8_path)},
        "bytes": {"fp32": fp32_path.stat().st_size, "int8": int8_path.stat().st_size},
    }


def codebook_variant(model: nn.Module, data: DataBundle, bits: int, epochs: int) -> dict[str, Any]:
    """k-means weight sharing on every conv/linear, centroids fine-tuned, scored on the test split."""
    shared = copy.deepcopy(model)
    result = share_weights(shared, CodebookConfig(bits=bits))
    x, y = data.test

    def test_accuracy() -> float:
        with torch.no_grad():
            return _accuracy(shared.eval()(x).numpy(), y.numpy())

    before = test_accuracy()
    if epochs > 0:
        train = TrainConfig(
            epochs=epochs, progress=False, optimizer=OptimizerConfig(name="adamw", lr=1e-4)
        )
        Trainer(shared, train).fit(data.loader("train", 64, True, torch.Generator().manual_seed(0)))
    n_weights = sum(m.weight.numel() for m in weight_layers(model).values())
    return {
        "bits": bits,
        "layers": result.layers,
        "accuracy_before_fine_tuning": before,
        "accuracy": test_accuracy(),
        "weight_bytes": result.storage_bytes(),
        "fp32_weight_bytes": n_weights * 4,
    }


def bench_stage(
    model: nn.Module, data: DataBundle, cfg: BenchConfig, onnx_files: dict[str, str]
) -> dict[str, Any]:
    """Benchmark eager fp32 (and bf16 autocast where the CPU has it) and the ONNX files."""
    model = plain_copy(model)
    x, y = data.test
    sample, labels = x.numpy().astype(np.float32), y.numpy()
    variants = [Variant("fp32 eager (PyTorch)", torch_runner(model))]
    if cpu_has_native_bf16():
        variants.append(Variant("bf16 autocast (PyTorch)", torch_runner(model, torch.bfloat16)))
    for name, path in onnx_files.items():
        variants.append(
            Variant(f"{name} (ONNX Runtime)", ort_runner(path, cfg.threads), file=Path(path))
        )
    for v in variants:
        v.accuracy = _accuracy(
            np.concatenate([v.run(sample[i : i + 256]) for i in range(0, len(sample), 256)]), labels
        )
    rows = add_ratios(benchmark(variants, sample, cfg), variants[0].name)
    return {
        "rows": rows,
        "baseline": variants[0].name,
        "config": {k: v for k, v in vars(cfg).items() if k != "enabled"},
    }
