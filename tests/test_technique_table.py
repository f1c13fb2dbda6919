"""Every technique on every kind of model users bring: a cell per (technique, model).

Models: a GRU + torch ``nn.MultiheadAttention``, torch's ``nn.TransformerEncoder``, the
registry ViT, a depthwise-separable CNN with squeeze-and-excitation, and a two-layer LSTM. Each
cell checks what the technique promises on that model (or that it refuses up front, by name).
The models are small and barely trained: these are behaviour checks, the accuracies are in
benchmarks/transformers.py.
"""

from __future__ import annotations

import copy
import functools
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dlforge.compress.config import DeepCompressionConfig
from dlforge.compress.deep_compression import deep_compression, load_compressed
from dlforge.compress.distill import DistillationStep, Distiller
from dlforge.compress.lowrank import LowRankConfig, factorize
from dlforge.compress.prune import GradualPruner, MagnitudePrune, magnitude_prune, sparsity
from dlforge.compress.quantize import QuantConfig, ptq
from dlforge.compress.quantize.fakequant import qat
from dlforge.compress.structured import ChannelPrune, count_macs, prune_channels
from dlforge.deploy.backends import OrtModel
from dlforge.deploy.export import export_onnx
from dlforge.deploy.runtime import kernels
from dlforge.models import create_model
from dlforge.models.convert import UnsupportedLayerError
from dlforge.train import OptimizerConfig, TrainConfig, Trainer
from dlforge.train.config import FineTune

SIGNAL, IMAGE = (1, 40), (1, 8, 8)
MODELS = {
    "gru_mha": ("attention_zoo:gru_mha", SIGNAL),
    "torch_transformer": ("attention_zoo:torch_transformer", SIGNAL),
    "vit": ("vit", IMAGE),
    "dwsep_se": ("userzoo:dwsep_se", IMAGE),
    "lstm": ("attention_zoo:lstm", SIGNAL),
}
RECURRENT = {"gru_mha", "lstm"}


def build(name: str, **kw: object) -> nn.Module:
    factory, shape = MODELS[name]
    torch.manual_seed(0)
    kwargs = {"dim": 32, "depth": 2} if factory == "vit" else {}
    return create_model(factory, shape, 4, **(kwargs | kw)).eval()


def data(name: str, n: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, *MODELS[name][1], generator=g)
    y = (x.flatten(1)[:, :8].sum(1) > 0).long() + 2 * (x.flatten(1)[:, 8:16].sum(1) > 0).long()
    return x, y  # a learnable 4-class rule


def loader(name: str) -> DataLoader:
    return DataLoader(TensorDataset(*data(name)), 32, shuffle=True,
                      generator=torch.Generator().manual_seed(0))  # fmt: skip


def quick(epochs: int = 1, lr: float = 3e-3) -> TrainConfig:
    return TrainConfig(epochs=epochs, progress=False, precision="fp32",
                       optimizer=OptimizerConfig(lr=lr))  # fmt: skip


@functools.cache
def _trained(name: str) -> nn.Module:
    model = build(name)
    Trainer(model, quick(3)).fit(loader(name))
    return model.eval()


def trained(name: str) -> nn.Module:
    """The model after a short training, trained once per test session (a copy each call)."""
    return copy.deepcopy(_trained(name))


CELLS = list(MODELS)


@pytest.mark.parametrize("name", CELLS)
def test_ptq_runs_linear_and_attention_products_in_int8_on_onnx_runtime(name: str) -> None:
    model = trained(name)
    x, _ = data(name)
    plan = ptq(model, [x[:64], x[64:]], QuantConfig())
    with torch.no_grad():
        fq, ref = plan.model(x), model(x)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(plan.model, x[:1], Path(tmp) / "int8.onnx")
        ort = OrtModel(path)(x.numpy())
        ops = kernels(path)
    # ONNX Runtime computes what the fake-quantized model computes.
    assert float((ort.argmax(1) == fq.argmax(1).numpy()).mean()) >= 0.95
    assert float((fq.argmax(1) == ref.argmax(1)).float().mean()) >= 0.85
    int8 = sum(ops["int8"].values())
    assert int8 >= len(plan.quantized) - 1  # every quantized layer but the logits head
    assert not {"MatMul", "FusedMatMul", "Conv", "FusedConv"} & set(ops["float"]), ops
    if name in RECURRENT:
        rnn = "gru" if name == "gru_mha" else "lstm"
        assert "recurrent layer stays float" in plan.float_reasons[rnn]
        assert {"GRU", "LSTM"} & set(ops["float"])
    if name in ("gru_mha", "torch_transformer", "vit"):
        assert ops["int8"].get("QLinearMatMul", 0) >= 2  # QK^T and AV in int8


@pytest.mark.parametrize("name", CELLS)
def test_qat_trains_and_exports(name: str) -> None:
    model = trained(name)
    x, _ = data(name)
    ft = FineTune(epochs=1, lr=1e-4, schedule="constant")
    plan = qat(model, loader(name), None, QuantConfig(), ft.train_config())
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(plan.model, x[:1], Path(tmp) / "qat.onnx")
        ort = OrtModel(path)(x.numpy())
    with torch.no_grad():
        fq = plan.model(x).numpy()
    assert float((ort.argmax(1) == fq.argmax(1)).mean()) >= 0.95


@pytest.mark.parametrize("name", CELLS)
def test_structured_pruning_removes_compute(name: str) -> None:
    model = trained(name)
    x, _ = data(name)
    result = prune_channels(model, x[:1], ChannelPrune(amount=0.5, heads=0.5))
    assert result.macs_removed > 0.2, (result.kept, result.pinned)
    assert result.model(x).shape == (len(x), 4)
    assert sum(p.numel() for p in result.model.parameters()) < sum(
        p.numel() for p in model.parameters()
    )


@pytest.mark.parametrize("name", CELLS)
def test_low_rank_factorises_every_linear_including_attention_projections(name: str) -> None:
    model = trained(name)
    x, _ = data(name)
    before = sum(p.numel() for p in model.parameters())
    result = factorize(model, LowRankConfig(mode="ratio", ratio=0.5), x[:1])
    assert model(x).shape == (len(x), 4)
    assert sum(p.numel() for p in model.parameters()) < before
    if name in ("gru_mha", "torch_transformer", "vit"):
        assert any(n.endswith("q_proj") for n in result.ranks), result.ranks
    if name in RECURRENT:
        assert any("recurrent weights are not factorised" in w for w in result.left.values())


@pytest.mark.parametrize("name", CELLS)
def test_magnitude_and_gradual_pruning_reach_every_weight_matrix(name: str) -> None:
    model = trained(name)
    magnitude_prune(model, MagnitudePrune(amount=0.6))
    share = sparsity(model)
    assert share["global"] == pytest.approx(0.6, abs=1e-3)
    assert share["left_out"] == []
    if name in ("gru_mha", "lstm"):
        assert any("weight_hh_l0" in k for k in share["layers"])
    if name == "gru_mha":
        assert "attn.in_proj_weight" in share["layers"]
    gradual = build(name)
    Trainer(gradual, quick(1), callbacks=[GradualPruner(0.5, 0, 0)]).fit(loader(name))
    assert sparsity(gradual)["global"] == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize("name", CELLS)
def test_deep_compression_writes_a_file_that_decodes_to_the_model(name: str) -> None:
    model = trained(name)
    x, _ = data(name)
    cfg = DeepCompressionConfig(
        sparsity=0.7, finetune=FineTune(epochs=1, lr=1e-3), codebook=FineTune(epochs=0)
    )
    with tempfile.TemporaryDirectory() as tmp:
        dc = deep_compression(model, loader(name), None, Path(tmp) / "m.dc", cfg)
        again = load_compressed(dc.path, model)
        with torch.no_grad():  # (a channels_last model may round differently in the convs)
            assert torch.allclose(again(x), dc.model(x), atol=1e-5)
        stored = dc.account["file_bytes"]
    fp32 = 4 * sum(p.numel() for p in model.parameters())
    assert dc.dense == {} and stored < fp32 / 3
    if name in RECURRENT:  # the recurrent matrices are shared and coded like the others
        rnn = "gru" if name == "gru_mha" else "lstm"
        assert f"{rnn}.weight_hh_l0" in {row["layer"] for row in dc.account["layers"]}


@pytest.mark.parametrize("name", CELLS)
def test_distillation_into_a_smaller_student(name: str) -> None:
    teacher = trained(name)
    if name == "vit":
        student = build(name, dim=16, depth=1)  # narrower and shallower
    elif name == "dwsep_se":
        student = build(name, widths=(8, 16, 32, 64))
    elif name == "torch_transformer":
        student = copy.deepcopy(teacher)
        student.encoder.layers = student.encoder.layers[:1]  # one layer instead of two
        student.encoder.num_layers = 1
    else:
        student = build(name, hidden=16)
    assert sum(p.numel() for p in student.parameters()) < sum(
        p.numel() for p in teacher.parameters()
    )
    distiller = Distiller(student, teacher, temperature=4.0, alpha=0.9)
    history = Trainer(distiller, quick(1), step=DistillationStep(distiller)).fit(loader(name))
    assert np.isfinite(history.epochs[-1]["train_loss"])
    with torch.no_grad():
        assert student(data(name)[0]).shape == (128, 4)


class Biased(nn.Module):
    """torch attention with learned key/value biases: no technique can rewrite it."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, add_bias_kv=True, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(x, x, x)[0].mean(1))


def test_refusals_name_the_layer_before_any_training() -> None:
    model = Biased().eval()
    x = torch.randn(4, 3, 8)
    for run in (
        lambda: ptq(model, [x]),
        lambda: factorize(copy.deepcopy(model), LowRankConfig(), x),
        lambda: prune_channels(model, x, ChannelPrune()),
    ):
        with pytest.raises(
            UnsupportedLayerError, match="attn: nn.MultiheadAttention with add_bias_kv"
        ):
            run()
    # skip_unsupported: the module stays float and is listed, the rest is quantized.
    plan = ptq(model, [x], QuantConfig(skip_unsupported=True))
    assert "attn" in plan.float_reasons and plan.quantized == ["head"]
    assert torch.allclose(plan.model(x), model(x), atol=0.05)
    # count_macs still works on such a model
    assert count_macs(model, x) > 0


def test_deep_compression_leaves_an_unsupported_module_dense_with_skip_unsupported() -> None:
    x, y = torch.randn(32, 3, 8), torch.randint(0, 2, (32,))
    cfg = DeepCompressionConfig(sparsity=0.5, finetune=FineTune(epochs=1),
                                codebook=FineTune(epochs=0), skip_unsupported=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        dc = deep_compression(Biased(), DataLoader(TensorDataset(x, y), 16), None,
                              Path(tmp) / "m.dc", cfg)  # fmt: skip
    assert "add_bias_kv" in dc.dense["attn"]
    assert [row["layer"] for row in dc.account["layers"]] == ["head"]  # attn.out_proj stays dense
    assert dc.model(x).shape == (32, 2)
