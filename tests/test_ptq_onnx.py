"""PTQ end to end: fake-quantized PyTorch model, QDQ ONNX export, ONNX Runtime int8 agreement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from dlforge.compress.quantize.fakequant import QuantConfig, act_quantizers, calibrate, prepare, ptq
from dlforge.deploy.backends import OrtModel
from dlforge.deploy.export import export_onnx
from dlforge.models import create_model
from dlforge.train import OptimizerConfig, TrainConfig, Trainer


@pytest.fixture(scope="module")
def trained_cnn(digits):
    torch.manual_seed(0)
    model = create_model("cnn", digits.input_shape, digits.num_classes)
    cfg = TrainConfig(epochs=6, progress=False, optimizer=OptimizerConfig(lr=3e-3))
    Trainer(model, cfg).fit(digits.loader("train", 64, True, torch.Generator().manual_seed(0)))
    return model.eval().to(memory_format=torch.contiguous_format)


def calib(digits, n: int = 8) -> list[torch.Tensor]:
    x = digits.train[0]
    return [x[i : i + 64] for i in range(0, 64 * n, 64)]


def test_ptq_keeps_accuracy_and_ort_agrees(trained_cnn, digits, tmp_path: Path) -> None:
    plan = ptq(trained_cnn, calib(digits))
    assert plan.quantized == ["0", "3", "8"] and plan.float_layers == []
    assert len(plan.folded_bn) == 2
    x, y = digits.test
    with torch.no_grad():
        fp32 = trained_cnn(x)
        fq = plan.model(x)
    acc_fp32 = (fp32.argmax(1) == y).float().mean().item()
    acc_fq = (fq.argmax(1) == y).float().mean().item()
    assert acc_fq >= acc_fp32 - 0.01

    f32_path = export_onnx(trained_cnn, x[:1], tmp_path / "fp32.onnx")
    q_path = export_onnx(plan.model, x[:1], tmp_path / "int8.onnx")
    ort_fp32 = OrtModel(f32_path, threads=1).predict(x.numpy())
    np.testing.assert_allclose(ort_fp32, fp32.numpy(), rtol=1e-4, atol=1e-4)
    ort_int8 = OrtModel(q_path, threads=1).predict(x.numpy())
    agreement = (ort_int8.argmax(1) == fq.argmax(1).numpy()).mean()
    assert agreement >= 0.99
    scale = np.abs(fq.numpy()).max()
    assert np.abs(ort_int8 - fq.numpy()).max() < 0.05 * scale

    graph = onnx.load(q_path).graph
    int8_weights = [
        t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2
    ]
    assert len(int8_weights) == 3  # every conv/linear weight is stored as int8
    assert not any(
        t.data_type == onnx.TensorProto.FLOAT and len(t.dims) >= 2 for t in graph.initializer
    )
    assert not any(n.op_type == "Relu" for n in graph.node)  # absorbed by the quantizers


def test_resnet_file_shrinks_and_all_convs_run_int8(tmp_path: Path) -> None:
    import onnxruntime as ort

    torch.manual_seed(0)
    model = create_model("resnet20", (3, 16, 16), 10).eval()
    x = torch.randn(64, 3, 16, 16)
    plan = ptq(model, [x[:32], x[32:]])
    f32 = export_onnx(model, x[:1], tmp_path / "fp32.onnx")
    q = export_onnx(plan.model, x[:1], tmp_path / "int8.onnx")
    assert q.stat().st_size <= 0.27 * f32.stat().st_size
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(q), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node]
    assert ops.count("QLinearConv") == 19 and "Conv" not in ops  # ORT fused every conv


def test_unquantizable_layers_are_listed_and_skips_respected() -> None:
    class WithNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(8, 16)
            self.norm = nn.LayerNorm(16)
            self.fc2 = nn.Linear(16, 3)

        def forward(self, x):
            return self.fc2(torch.relu(self.norm(self.fc1(x))))

    plan = prepare(WithNorm(), QuantConfig(skip=["fc2"]))
    assert plan.quantized == ["fc1"]
    assert plan.float_layers == ["norm", "fc2"]


def test_calibration_without_data_is_an_error() -> None:
    plan = prepare(create_model("mlp", (4,), 2), QuantConfig())
    with pytest.raises(ValueError, match="calibration needs data"):
        calibrate(plan, [])


def test_observers_change_the_activation_ranges(trained_cnn, digits) -> None:
    ranges = {}
    for observer in ("minmax", "percentile"):
        plan = ptq(trained_cnn, calib(digits), QuantConfig(observer=observer))
        ranges[observer] = [q.scale.item() for q in act_quantizers(plan.model)]
    assert all(p <= m for p, m in zip(ranges["percentile"], ranges["minmax"]))
    assert ranges["percentile"] != ranges["minmax"]


def test_auto_calibrator_picks_the_best_on_validation(trained_cnn, digits) -> None:
    from dlforge.compress.quantize.fakequant import AUTO_OBSERVERS, auto_ptq

    xv, yv = digits.val

    def evaluate(m: nn.Module) -> float:
        with torch.no_grad():
            return (m(xv).argmax(1) == yv).float().mean().item()

    plan, trials = auto_ptq(
        trained_cnn, calib(digits), evaluate, QuantConfig(weight_bits=4, activation_bits=4)
    )
    assert [t["observer"] for t in trials] == list(AUTO_OBSERVERS)
    best = max(t["score"] for t in trials)
    assert evaluate(plan.model) == best
    assert plan.config.observer == next(t["observer"] for t in trials if t["score"] == best)


def test_quantized_output_option(trained_cnn, digits) -> None:
    x = digits.test[0]
    plain = ptq(trained_cnn, calib(digits))
    with_out = ptq(trained_cnn, calib(digits), QuantConfig(quantize_output=True))
    assert len(act_quantizers(with_out.model)) == len(act_quantizers(plain.model)) + 1
    with torch.no_grad():
        quantized, free = with_out.model(x), plain.model(x)
    assert quantized.unique().numel() <= 256 < free.unique().numel()  # logits on a uint8 grid


def test_exported_int8_weights_are_the_eager_codes_on_ties(tmp_path: Path) -> None:
    """Weights exactly half a step between two codes: ONNX must hold the codes the calibrated
    PyTorch model computes (x * (1/scale), half to even), not x / scale's."""
    from dlforge.compress.quantize.qscheme import quantize

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8)).eval()
    plan = ptq(model, [torch.randn(32, 16)])
    layer = plan.model.get_submodule("0")
    scale = layer.scale.detach()  # per output channel, fixed after calibration
    ties = (torch.arange(-60, 60, 8).float() + 0.5)[:15]  # 15 half-way points, one per column
    with torch.no_grad():
        w = layer.layer.weight
        w[:, :15] = ties * scale[:, None]
        w[:, 15] = 127 * scale  # keep each row's range, hence its scale
    eager = quantize(w.detach(), scale, layer.zero_point, -127, 127, axis=0)
    path = export_onnx(plan.model, torch.randn(1, 16), tmp_path / "ties.onnx")
    weights = [
        onnx.numpy_helper.to_array(t)
        for t in onnx.load(path).graph.initializer
        if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2
    ]
    assert len(weights) == 1
    np.testing.assert_array_equal(weights[0], eager.numpy())
