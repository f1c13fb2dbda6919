"""Fake-quantized model: BN folded, weights and activations quantized where int8 kernels will be.

``prepare(model, QuantConfig(...))`` returns a traced copy in which
- every Conv1d/Conv2d/Linear becomes a ``QuantLayer`` (weights fake-quantized, per channel by
  default);
- an ``ActQuant`` sits on every tensor that feeds or leaves a quantized op (conv, linear, add,
  pooling), placed after a ReLU that directly follows the op, so the exported graph has the
  QDQ pattern ONNX Runtime fuses into integer kernels (QLinearConv, QLinearAdd, ...). Two
  exceptions keep transformers accurate: residual sums that a LayerNorm reads stay float, and
  a Linear's output is quantized only for an int8 reader (MatMulIntegerToFloat needs none);
  a tensor that holds integers or infinities (an attention mask) stays float.
Layers with parameters that are none of these stay in float and are listed.

The forward passes use PyTorch's ``fake_quantize_*`` ops, which our arithmetic reproduces bit for
bit (tests/test_qscheme.py) and which export to ONNX QuantizeLinear/DequantizeLinear.
"""

from __future__ import annotations

import copy
import dataclasses
import operator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import fx, nn

from dlforge.compress.quantize.config import QuantConfig
from dlforge.compress.quantize.fold import BN_TYPES, fold_batch_norm, fold_into, trace
from dlforge.compress.quantize.observers import Observer, make_observer
from dlforge.compress.quantize.qscheme import QuantSpec, compute_qparams, fake_quantize_lsq
from dlforge.models.attention import MultiHeadAttention
from dlforge.models.convert import unpack_attention

QUANT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)
RELU_FUNCS = (F.relu, torch.relu)
POOL_MODULES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AvgPool1d, nn.AvgPool2d,
                nn.MaxPool1d, nn.MaxPool2d)  # fmt: skip
ADD_FUNCS = (operator.add, operator.iadd, torch.add)
MATMUL_FUNCS = (torch.matmul, operator.matmul, torch.bmm)


class ActQuant(nn.Module):
    """Observes activations while calibrating, then fake-quantizes them per tensor."""

    scale: torch.Tensor
    zero_point: torch.Tensor

    def __init__(self, spec: QuantSpec, observer: str) -> None:
        super().__init__()
        self.spec, self.observer_name = spec, observer
        self.observer = make_observer(observer, spec)
        self.qat_observer: Observer | None = None  # set by start_qat
        # Scalars (0-d): ONNX per-tensor Q/DQ, e.g. QLinearAdd, require scalar qparams.
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))
        self.mode: Literal["observe", "quantize", "float", "qat"] = "observe"
        self.unquantizable = False  # saw integers or infinities while calibrating

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "observe":
            # An integer tensor (token ids, a 0/1 mask) or one holding infinities (an additive
            # attention mask of -inf) has no int8 grid: it stays float rather than poison the
            # range (a -inf minimum makes the scale infinite).
            if not x.is_floating_point() or (x.numel() and not _finite(x)):
                self.unquantizable = True
            elif not self.unquantizable:
                self.observer.update(x)
            return x
        if self.mode == "qat" and self.training and self.qat_observer is not None:
            # Ranges follow the training activations (moving average), then fake-quantize
            # with the straight-through estimator.
            self.qat_observer.update(x)
            scale, zp = self.qat_observer.qparams()
            self.scale.copy_(scale.reshape(()))
            self.zero_point.copy_(zp.reshape(()))
        if self.mode == "float":
            return x
        return torch.fake_quantize_per_tensor_affine(
            x, self.scale, self.zero_point, self.spec.qmin, self.spec.qmax
        )

    def freeze(self) -> None:
        if self.unquantizable:
            self.mode = "float"
            return
        scale, zp = self.observer.qparams()
        self.scale.copy_(scale.reshape(()))
        self.zero_point.copy_(zp.reshape(()))
        self.mode = "quantize"


def _finite(x: torch.Tensor) -> bool:
    return bool(torch.isfinite(torch.stack(x.aminmax())).all())  # one pass, no bool copy


class QuantLayer(nn.Module):
    """A conv/linear whose weights are fake-quantized (qparams refreshed while training)."""

    layer: nn.Conv1d | nn.Conv2d | nn.Linear
    scale: torch.Tensor
    zero_point: torch.Tensor

    def __init__(self, layer: nn.Module, spec: QuantSpec, learn_step_size: bool = False) -> None:
        super().__init__()
        assert isinstance(layer, QUANT_LAYERS)
        self.layer, self.spec, self.lsq = layer, spec, learn_step_size
        scale, zp = self._minmax_qparams()
        self.register_buffer("zero_point", zp)
        if learn_step_size:
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)

    def _minmax_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.layer.weight.detach()
        if self.spec.per_channel:
            flat = w.reshape(w.shape[0], -1)
            return compute_qparams(flat.amin(1), flat.amax(1), self.spec)
        scale, zp = compute_qparams(w.min(), w.max(), self.spec)
        return scale.reshape(1), zp.reshape(1)

    def quantized_weight(self) -> torch.Tensor:
        w = self.layer.weight
        spec = self.spec
        if self.lsq and self.training:
            return fake_quantize_lsq(
                w, self.scale, spec.qmin, spec.qmax, 0 if spec.per_channel else None
            )
        if self.training:  # QAT with min-max weights: follow the moving weights
            scale, zp = self._minmax_qparams()
            self.scale.data.copy_(scale)
            self.zero_point.copy_(zp)
        scale = self.scale.detach() if self.lsq else self.scale
        # Symmetric codes never reach -2^(b-1), so the full range gives identical values; ONNX
        # export accepts only full int8/uint8 ranges for QuantizeLinear.
        qmin = -(2 ** (spec.bits - 1)) if spec.signed else spec.qmin
        if spec.per_channel:
            return torch.fake_quantize_per_channel_affine(
                w, scale, self.zero_point, 0, qmin, spec.qmax
            )
        return torch.fake_quantize_per_tensor_affine(w, scale, self.zero_point, qmin, spec.qmax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.quantized_weight()
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w, self.layer.bias)
        return self.layer._conv_forward(x, w, self.layer.bias)


@dataclass
class QuantPlan:
    """What ``prepare`` did: the traced model and which layers it quantized or left in float."""

    model: fx.GraphModule
    config: QuantConfig
    folded_bn: list[str]
    quantized: list[str]
    float_layers: list[str]
    activation_quantizers: list[str]
    float_reasons: dict[str, str] = dataclasses.field(default_factory=dict)  # layer -> why


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), nn.ReLU)
    if node.op == "call_function":
        return node.target in RELU_FUNCS
    return node.op == "call_method" and node.target == "relu"


PASS_THROUGH_MODULES = (nn.Flatten, nn.Dropout, nn.Identity, nn.MaxPool1d, nn.MaxPool2d)
PASS_THROUGH_CALLS = {torch.flatten, "flatten", "view", "reshape"}


def _passes_through(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Ops that only move or select values, so a quantized input stays quantized."""
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), PASS_THROUGH_MODULES)
    return node.op in ("call_function", "call_method") and node.target in PASS_THROUGH_CALLS


def _is_bn(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    return node.op == "call_module" and isinstance(modules.get(str(node.target)), BN_TYPES)


def _kind(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        m = modules.get(str(node.target))
        if isinstance(m, QuantLayer):
            return "layer"
        if isinstance(m, POOL_MODULES):
            return "pool"
    if node.op == "call_function" and node.target in ADD_FUNCS:
        return "add"
    if node.op == "call_method" and node.target == "add":
        return "add"
    if node.op == "call_function" and node.target in MATMUL_FUNCS:
        return "matmul"
    return "other"


def prepare(model: nn.Module, config: QuantConfig | None = None, fold_bn: bool = True) -> QuantPlan:
    """Fold BN, wrap quantizable layers and insert activation quantizers (in observe mode).

    ``fold_bn=False`` keeps batch norms as layers (for QAT, which folds them in ``convert_qat``);
    the activation quantizer then sits after conv → BN → ReLU. torch's attention modules are
    first rewritten as dlforge's (``models/convert.py``), whose matrix products are explicit.
    """
    config = config or QuantConfig()
    model = copy.deepcopy(model)
    unpacked = unpack_attention(model, "int8 quantization", config.skip_unsupported)
    for m in model.modules():
        if isinstance(m, MultiHeadAttention):
            m.explicit = True  # QK^T and AV as MatMuls that get int8 inputs
    if fold_bn:
        gm, folded = fold_batch_norm(model)
    else:
        gm, folded = trace(model), []
    called = {str(n.target) for n in gm.graph.nodes if n.op == "call_module"}
    quantized, float_layers, reasons = [], [], dict(unpacked.left)
    for name, module in list(gm.named_modules()):
        if not name or any(name.startswith(f"{c}.") for c in called):
            continue  # the root, or inside a module fx treats as one call (listed itself)
        if any(True for _ in module.children()) and name not in called:
            continue
        if isinstance(module, QUANT_LAYERS) and name not in config.skip and name in called:
            gm.set_submodule(name, QuantLayer(module, config.weight_spec(), config.learn_step_size))
            quantized.append(name)
        elif isinstance(module, BN_TYPES) and not fold_bn:
            continue  # folded later
        elif any(True for _ in module.parameters(recurse=name in called)):
            float_layers.append(name)
            reasons.setdefault(name, _why_float(name, module, called, config))
    modules = dict(gm.named_modules())
    graph = gm.graph
    quantizers: dict[fx.Node, fx.Node] = {}  # producer -> its ActQuant node
    residual = _residual_adds(graph, modules)
    names: list[str] = []

    def quantize_output(producer: fx.Node) -> fx.Node:
        if producer in quantizers:
            return quantizers[producer]
        source = producer.all_input_nodes[0] if producer.all_input_nodes else None
        if _passes_through(producer, modules) and source is not None and source in quantizers:
            # flatten/reshape/dropout keep values on the quantized grid: no second quantizer
            quantizers[producer] = producer
            return producer
        name = f"act_quant_{len(names)}"
        gm.add_submodule(name, ActQuant(config.activation_spec(), config.observer))
        names.append(name)
        with graph.inserting_after(producer):
            q = graph.call_module(name, (producer,))
        # Float residual sums keep reading the float value: the stream stays unquantized.
        producer.replace_all_uses_with(q, delete_user_cb=lambda u: u is not q and u not in residual)
        quantizers[producer] = q
        quantizers[q] = q
        return q

    for node in list(graph.nodes):
        kind = _kind(node, modules)
        if kind == "other" or node in residual:
            continue
        for arg in node.all_input_nodes:
            quantize_output(arg)
        point = node
        if len(point.users) == 1 and _is_bn(next(iter(point.users)), modules):
            point = next(iter(point.users))  # unfolded BN (QAT) belongs to its conv
        users = list(point.users)
        if any(u.op == "output" for u in users) and not config.quantize_output:
            continue  # the model's output stays float (logits)
        if _float_read_linear(point, modules, residual):
            continue  # ORT runs it as MatMulIntegerToFloat: a float output loses nothing
        if len(users) == 1 and _is_relu(users[0], modules):
            quantize_output(users[0])  # after the ReLU: its range [0, max] absorbs the ReLU
        else:
            quantize_output(point)
    graph.lint()
    gm.recompile()
    return QuantPlan(gm, config, folded, quantized, float_layers, names, reasons)


def _readers(node: fx.Node, modules: dict[str, nn.Module]) -> set[fx.Node]:
    """The nodes that use ``node``'s value, looking through dropout/identity/reshape."""
    out: set[fx.Node] = set()
    for user in node.users:
        out |= _readers(user, modules) if _passes_through(user, modules) else {user}
    return out


def _float_read_linear(
    node: fx.Node, modules: dict[str, nn.Module], residual: set[fx.Node]
) -> bool:
    """A quantized Linear whose output only float ops read (GELU, a residual sum, softmax...).
    Its int8 product does not need a quantized output (ONNX Runtime fuses DQ -> MatMul into
    MatMulIntegerToFloat; the bias Add already kept QLinearMatMul away), and quantizing it
    would cost accuracy and block fusions such as BiasGelu. A ReLU reader keeps the quantizer
    after it, as for convs."""
    layer = modules.get(str(node.target)) if node.op == "call_module" else None
    if not isinstance(layer, QuantLayer) or not isinstance(layer.layer, nn.Linear):
        return False
    if len(node.users) == 1 and _is_relu(next(iter(node.users)), modules):
        return False
    return all(
        r.op != "output" and (_kind(r, modules) == "other" or r in residual)
        for r in _readers(node, modules)
    )  # the model's output reaches here only with quantize_output, which asks for a quantizer


def _is_layer_norm(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), nn.LayerNorm)
    return node.op == "call_function" and node.target is F.layer_norm


def _residual_adds(graph: fx.Graph, modules: dict[str, nn.Module]) -> set[fx.Node]:
    """Adds whose sum a LayerNorm reads, directly or through further such adds: a transformer's
    residual stream (and BERT's embedding sum). They stay float: ONNX Runtime has no int8
    LayerNorm, so quantizing the sum buys no kernel, and the stream carries a few outlier
    features whose range per-tensor int8 cannot share with the rest (Bondarenko et al., 2021;
    quantizing them and the outputs summed into them left MiniLM at cosine 0.81, not 0.99)."""
    found: set[fx.Node] = set()
    for node in reversed(graph.nodes):  # users first, so chains of adds resolve in one pass
        if _kind(node, modules) == "add" and any(
            _is_layer_norm(r, modules) or r in found for r in _readers(node, modules)
        ):
            found.add(node)
    return found


FLOAT_REASONS: tuple[tuple[tuple[type[nn.Module], ...], str], ...] = (
    ((nn.LayerNorm, nn.GroupNorm), "normalisation stays float (no int8 kernel in ONNX Runtime)"),
    ((nn.GRU, nn.LSTM, nn.RNN), "recurrent layer stays float (ONNX Runtime has no int8 "
     "GRU/LSTM kernel for QDQ graphs)"),
    ((nn.Embedding,), "embedding lookup stays float"),
    (BN_TYPES, "batch norm that follows no conv/linear stays float"),
)  # fmt: skip


def _why_float(name: str, module: nn.Module, called: set[str], config: QuantConfig) -> str:
    if name in config.skip:
        return "listed in quantize.skip"
    if name not in called:
        return "called inside another module that torch.fx cannot see into"
    for types, why in FLOAT_REASONS:
        if isinstance(module, types):
            return why
    if any(True for _ in module.children()):
        return f"{type(module).__name__} is one opaque call to torch.fx: it stays float whole"
    return f"{type(module).__name__} has no int8 kernel here"


def act_quantizers(model: nn.Module) -> list[ActQuant]:
    return [m for m in model.modules() if isinstance(m, ActQuant)]


@torch.no_grad()
def calibrate(
    plan: QuantPlan, batches: list[torch.Tensor] | torch.utils.data.DataLoader
) -> QuantPlan:
    """Run calibration batches through the observers, then switch to fake quantization."""
    model = plan.model.eval()
    for q in act_quantizers(model):
        q.mode = "observe"
        q.unquantizable = False  # decided afresh by this calibration
    seen = 0
    for batch in batches:
        if seen >= plan.config.calibration_batches:
            break
        x = batch[0] if isinstance(batch, list | tuple) else batch
        model(x)
        seen += 1
    if seen == 0:
        raise ValueError("calibration needs data: the calibration loader yielded no batches")
    for q in act_quantizers(model):
        q.freeze()
    return plan


def ptq(
    model: nn.Module,
    calibration: list[torch.Tensor] | torch.utils.data.DataLoader,
    config: QuantConfig | None = None,
) -> QuantPlan:
    """Post-training quantization: fold BN, quantize weights, calibrate activations."""
    return calibrate(prepare(model, config), calibration)


def start_qat(plan: QuantPlan, momentum: float = 0.01) -> QuantPlan:
    """Switch calibrated activation quantizers to QAT: ranges keep following the activations
    through a moving average that starts from the calibrated range."""
    from dlforge.compress.quantize.observers import MovingAverageMinMaxObserver

    for q in act_quantizers(plan.model):
        if q.unquantizable:
            continue  # stays float (see ActQuant.forward)
        observer = MovingAverageMinMaxObserver(q.spec, momentum=momentum)
        lo, hi = q.observer.range()
        observer.min_val, observer.max_val, observer.batches = lo.clone(), hi.clone(), 1
        q.qat_observer = observer
        q.mode = "qat"
    return plan


def freeze_batch_norm(model: nn.Module) -> int:
    """Put every BN in eval mode: it normalises with, and stops updating, its running statistics.
    Call after ``model.train()`` (the Trainer's ``on_train_epoch_start`` hook does)."""
    count = 0
    for m in model.modules():
        if isinstance(m, BN_TYPES):
            m.eval()
            count += 1
    return count


@torch.no_grad()
def convert_qat(plan: QuantPlan) -> QuantPlan:
    """After QAT: fold each BN into its QuantLayer, rescale weight qparams, freeze activations."""
    gm = plan.model.eval()
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if not _is_bn(node, modules):
            continue
        prev = node.args[0]
        layer = modules.get(str(prev.target)) if isinstance(prev, fx.Node) else None
        if not isinstance(layer, QuantLayer) or len(prev.users) != 1:
            continue
        bn = modules[str(node.target)]
        assert isinstance(bn, BN_TYPES) and bn.running_var is not None
        gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
        factor = gamma / torch.sqrt(bn.running_var + bn.eps)
        fold_into(layer.layer, bn)
        if layer.spec.per_channel and layer.lsq:
            layer.scale.mul_(factor.abs())  # learned steps stay on the same integer codes
        else:
            scale, zp = layer._minmax_qparams()
            layer.scale.copy_(scale)
            layer.zero_point.copy_(zp)
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        plan.folded_bn.append(str(node.target))
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    for q in act_quantizers(gm):
        q.mode = "float" if q.unquantizable else "quantize"
    return plan


def qat(
    model: nn.Module,
    train_loader: torch.utils.data.DataLoader,
    val_loader: torch.utils.data.DataLoader | None,
    config: QuantConfig | None = None,
    train_config: Any = None,
    freeze_bn_epoch: int | None = None,
) -> QuantPlan:
    """Quantization-aware training with the dlforge Trainer.

    Calibrate as PTQ does, then fine-tune with fake quantization in the forward pass (straight-
    through gradients; learned step sizes with ``config.learn_step_size``). Batch norms train
    until epoch ``freeze_bn_epoch`` (0-based), then keep their running statistics. Finally BN
    is folded and the model is ready to export.
    """
    from dlforge.train import FreezeBatchNorm, TrainConfig, Trainer

    config = config or QuantConfig()
    plan = prepare(model, config, fold_bn=False)
    calibrate(plan, train_loader)
    start_qat(plan)

    callbacks = [FreezeBatchNorm(freeze_bn_epoch)] if freeze_bn_epoch is not None else []
    trainer = Trainer(plan.model, train_config or TrainConfig(), callbacks=callbacks)
    trainer.fit(train_loader, val_loader)
    plan.model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    return convert_qat(plan)


AUTO_OBSERVERS: tuple[Literal["minmax", "percentile", "mse", "entropy"], ...] = (
    "minmax",
    "percentile",
    "mse",
    "entropy",
)


def auto_ptq(
    model: nn.Module,
    calibration: list[torch.Tensor] | torch.utils.data.DataLoader,
    evaluate: Any,
    config: QuantConfig | None = None,
) -> tuple[QuantPlan, list[dict[str, Any]]]:
    """PTQ with each calibrator in ``AUTO_OBSERVERS``; keep the best by ``evaluate(model)``
    (a validation score, higher is better; ties go to the simpler calibrator)."""
    config = config or QuantConfig()
    trials, best = [], None
    for name in AUTO_OBSERVERS:
        plan = ptq(model, calibration, dataclasses.replace(config, observer=name))
        score = float(evaluate(plan.model))
        trials.append({"observer": name, "score": score})
        if best is None or score > best[0]:
            best = (score, plan)
    assert best is not None
    return best[1], trials
