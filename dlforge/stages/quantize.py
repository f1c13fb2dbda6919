"""The quantize stage: PTQ or QAT, export fp32 and int8 ONNX, score all three on the test split;
optionally per-layer sensitivity with a mixed-precision choice, and k-means weight sharing."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from dlforge.compress.quantize.config import QuantConfig
from dlforge.config import check, to_dict
from dlforge.stages.base import RunContext, Stage, plain_copy
from dlforge.train.config import FineTune

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from dlforge.data import DataBundle


@dataclass
class QuantizeStageConfig(QuantConfig):
    enabled: bool = False
    method: Literal["ptq", "qat"] = "ptq"
    qat: FineTune = field(default_factory=lambda: FineTune(epochs=3, lr=1e-4, schedule="constant"))
    freeze_bn_epoch: int | None = 1  # QAT: BN statistics frozen from this epoch (0-based)
    sensitivity: bool = False  # per-layer weight sensitivity and a mixed-precision choice
    mixed_precision_max_drop: float = 0.01  # accuracy budget (on the val split) for that choice
    mixed_precision_max_bytes: float | None = None  # or a weight-size budget instead
    sensitivity_bits: list[int] = field(default_factory=lambda: [8, 4, 2])
    codebook_bits: int | None = None  # also report k-means weight sharing at this many bits
    codebook: FineTune = field(
        default_factory=lambda: FineTune(epochs=2, lr=1e-4, schedule="constant")
    )

    MOVED: ClassVar[dict[str, str]] = {
        "qat_epochs": "qat.epochs",
        "qat_lr": "qat.lr",
        "codebook_epochs": "codebook.epochs",
    }

    def validate(self) -> None:
        super().validate()
        if self.method == "qat":
            check(self.qat.epochs >= 1, "qat.epochs", self.qat.epochs, "must be >= 1 for QAT")
        if self.codebook_bits is not None:
            check(1 <= self.codebook_bits <= 8, "codebook_bits", self.codebook_bits,
                  "must be in 1..8")  # fmt: skip
        check(all(2 <= b <= 8 for b in self.sensitivity_bits), "sensitivity_bits",
              self.sensitivity_bits, "must be bit widths in 2..8")  # fmt: skip


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def _layer_names(model: nn.Module, names: list[str]) -> list[str]:
    """``0`` -> ``0 (Conv2d)``: a layer's name with what it is (the quantized wrapper's layer)."""
    out = []
    for name in names:
        module = model.get_submodule(name)
        inner = getattr(module, "layer", module)
        out.append(f"{name} ({type(inner).__name__})")
    return out


def quantize_stage(
    model: nn.Module, data: DataBundle, cfg: QuantConfig, out_dir: Path, robust: Any = None
) -> dict[str, Any]:
    """PTQ on training batches (or QAT), export fp32 and int8 ONNX, and score all three;
    ``robust`` (a ``dlforge.robust.suite.Probe``) adds their robustness (``int8_robustness``)."""
    import numpy as np
    import torch

    from dlforge.compress.quantize import ptq
    from dlforge.compress.quantize.fakequant import auto_ptq, qat
    from dlforge.compress.quantize.sensitivity import mixed_precision
    from dlforge.deploy.bench import ort_runner
    from dlforge.deploy.export import export_onnx
    from dlforge.deploy.runtime import kernels
    from dlforge.deploy.session import PREPROCESSING_FILE
    from dlforge.train.checkpoint import atomic_write_json

    model = plain_copy(model)
    stage = cfg if isinstance(cfg, QuantizeStageConfig) else QuantizeStageConfig(**vars(cfg))
    x_train = data.train[0]
    n_calib = min(len(x_train), 64 * cfg.calibration_batches)
    calib = [x_train[i : i + 64] for i in range(0, n_calib, 64)]
    x, y = data.test
    labels = y.numpy()
    xv, yv = data.val

    def evaluate(m: nn.Module) -> float:
        with torch.no_grad():
            return _accuracy(m.eval()(xv).numpy(), yv.numpy())

    result: dict[str, Any] = {}
    if stage.method == "qat":
        ft = stage.qat
        loader = data.loader("train", ft.batch_size, True, torch.Generator().manual_seed(ft.seed))
        plan = qat(model, loader, None, cfg, ft.train_config(), stage.freeze_bn_epoch)
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
        result["codebook"] = codebook_variant(model, data, stage.codebook_bits, stage.codebook)
    if robust is not None:
        result["robust"] = int8_robustness(model, plan.model, fp32_path, int8_path, robust)
    return result | {
        "config": {k: v for k, v in to_dict(cfg).items() if k != "enabled"},
        "method": stage.method,
        "observer": plan.config.observer,
        "quantized_layers": _layer_names(plan.model, plan.quantized),
        "float_layers": plan.float_layers,
        "float_reasons": plan.float_reasons,
        "kernels": kernels(int8_path),
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


def int8_robustness(
    model: nn.Module, fake_quant: nn.Module, fp32_path: Path, int8_path: Path, probe: Any
) -> dict[str, Any]:
    """PGD where there are gradients (fp32 and the fake-quant model in PyTorch); transfer from
    the fp32 model and the black-box Square attack where there are none (ONNX Runtime)."""
    from dlforge.robust.evaluate import accuracy, predict_of
    from dlforge.robust.suite import onnx_robustness, variant_robustness

    rows = []
    for name, m, source in (("fp32 (PyTorch)", model, None),
                            ("fake-quant (PyTorch)", fake_quant, model)):  # fmt: skip
        clean = accuracy(predict_of(probe.wrap(m)), probe.x, probe.y)
        rows.append({"variant": name, "clean_accuracy": clean,
                     **variant_robustness(m, probe, source)})  # fmt: skip
    for name, path in (("int8 (ONNX Runtime)", int8_path), ("fp32 (ONNX Runtime)", fp32_path)):
        rows.append({"variant": name, **onnx_robustness(path, probe, model)})
    s = probe.settings
    return {"eps": probe.compare_eps, "samples": len(probe.y), "steps": s.steps,
            "square_queries": s.square_queries, "rows": rows}  # fmt: skip


def codebook_variant(model: nn.Module, data: DataBundle, bits: int, ft: FineTune) -> dict[str, Any]:
    """k-means weight sharing on every conv/linear, centroids fine-tuned, scored on the test split."""
    import torch

    from dlforge.compress.quantize.codebook import CodebookConfig, share_weights
    from dlforge.compress.quantize.sensitivity import weight_layers
    from dlforge.stages.compress import finetune

    shared = copy.deepcopy(model)
    result = share_weights(shared, CodebookConfig(bits=bits))
    x, y = data.test

    def test_accuracy() -> float:
        with torch.no_grad():
            return _accuracy(shared.eval()(x).numpy(), y.numpy())

    before = test_accuracy()
    finetune(shared, data, ft)
    n_weights = sum(m.weight.numel() for m in weight_layers(model).values())
    return {
        "bits": bits,
        "layers": result.layers,
        "accuracy_before_fine_tuning": before,
        "accuracy": test_accuracy(),
        "weight_bytes": result.storage_bytes(),
        "fp32_weight_bytes": n_weights * 4,
    }


class QuantizeStage(Stage):
    name = "quantize"
    title = "Quantization (int8)"

    def preflight(self, recipe: Any, data: DataBundle, model: nn.Module) -> None:
        from dlforge.models.convert import unpack_attention

        cfg = recipe.quantize
        unpack_attention(plain_copy(model), "int8 quantization", cfg.skip_unsupported)

    def run(self, ctx: RunContext) -> dict[str, Any]:
        from dlforge.stages.robust import compare_probe

        r = ctx.recipe
        result = quantize_stage(
            ctx.model, ctx.data, r.quantize, ctx.run_dir / "deploy", compare_probe(r, ctx.data)
        )
        ctx.onnx_files.update({k: Path(v) for k, v in result["files"].items()})
        return result

    def report(self, result: dict[str, Any], notes: list[str]) -> list[str]:
        from dlforge.report.sections import quantize_section

        return quantize_section(self.title, result, notes)

    def summary(self, result: dict[str, Any]) -> list[str]:
        acc = result["accuracy"]
        return [
            f"accuracy fp32 {acc['fp32']:.4f}  fake-quant {acc['fake_quant']:.4f}  "
            f"ONNX Runtime int8 {acc['onnxruntime_int8']:.4f}",
            *(f"{name}: {path}" for name, path in result["files"].items()),
        ]
