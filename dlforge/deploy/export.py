"""Export to ONNX: float models as they are, fake-quantized models as QDQ graphs with int8 weights.

torch.onnx turns each fake-quantize op into a QuantizeLinear/DequantizeLinear pair. Two passes
then make the file what ONNX Runtime's own quantizer would write:
- a QuantizeLinear applied to a weight initializer is computed once, leaving the int8 weight and
  its DequantizeLinear (the file shrinks to about a quarter);
- a Relu between an op and a QuantizeLinear whose zero point is the lowest code is dropped: the
  quantizer's clamp already does its work, and ORT can then fuse op + Q into an integer kernel;
- a Transpose of a dequantized weight (a Linear on 3-D input exports as MatMul(x, W^T)) is
  applied to the int8 initializer instead, so that ORT sees DequantizeLinear → MatMul and runs
  the product in int8 (with the Transpose between, it fused a float MatMul).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from dlforge.train.checkpoint import atomic_write

OPSET = 17


def export_onnx(
    model: nn.Module, example: torch.Tensor, path: str | Path, dynamic_batch: bool = True
) -> Path:
    """Export ``model`` (eval mode) to ``path``; QDQ clean-up passes run on quantized graphs."""
    model = model.eval()
    path = Path(path)

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(
                model,
                (example,),
                tmp,
                dynamo=False,  # fast, and maps fake-quantize ops straight to Q/DQ
                opset_version=OPSET,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}
                if dynamic_batch
                else None,
            )
        graph = onnx.load(tmp)
        fold_weight_quantizers(graph)
        transpose_quantized_weights(graph)
        drop_relu_before_quantize(graph)
        inline_constant_identities(graph)
        drop_zero_weight_zero_points(graph)
        compact_names(graph)
        onnx.checker.check_model(graph)
        onnx.save(graph, tmp)

    return atomic_write(path, write)


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:  # nodes are topologically sorted
        if node.op_type == "Constant" and node.attribute:
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]  # the exporter dedups shared constants
    return values


def fold_weight_quantizers(model: onnx.ModelProto) -> int:
    """Replace QuantizeLinear(constant weight) by its integer result; returns how many."""
    graph = model.graph
    consts = _constants(graph)
    folded = 0
    for node in list(graph.node):
        if node.op_type != "QuantizeLinear" or node.input[0] not in consts:
            continue
        x, scale, zp = (consts[n] for n in node.input[:3])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        q = quantize_codes(x, scale, zp, axis)
        graph.initializer.append(numpy_helper.from_array(q, node.output[0]))
        graph.node.remove(node)
        folded += 1
    _drop_unused(graph)
    return folded


def quantize_codes(x: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: int) -> np.ndarray:
    """The integer codes PyTorch's fake-quantize kernels compute: round(x * (1/scale)) + zp in
    float32, half to even. Dividing instead (x / scale) lands one code apart on ties, and the
    exported weights would then differ from the calibrated model's."""
    shape = [1] * x.ndim
    if scale.ndim == 1 and x.ndim > 0:
        shape[axis] = -1
    inv = np.float32(1.0) / scale.astype(np.float32).reshape(shape)
    q = np.round(x.astype(np.float32) * inv) + zp.reshape(shape).astype(np.float32)
    info = np.iinfo(zp.dtype)
    return np.clip(q, info.min, info.max).astype(zp.dtype)


def transpose_quantized_weights(model: onnx.ModelProto) -> int:
    """DequantizeLinear(W) -> Transpose(perm=[1, 0]) becomes DequantizeLinear(W^T) with the
    per-channel axis moved; returns how many weights were transposed."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers = _consumers(graph)
    producers = {out: node for node in graph.node for out in node.output}
    done = 0
    for node in list(graph.node):
        dq = producers.get(node.input[0]) if node.op_type == "Transpose" else None
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            continue
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        weight = numpy_helper.to_array(inits[dq.input[0]])
        if weight.ndim != 2 or perm not in (None, [1, 0]) or len(consumers[dq.output[0]]) != 1:
            continue
        if len(consumers.get(dq.input[0], [])) != 1:
            continue  # the int8 weight is shared with another use
        inits[dq.input[0]].CopyFrom(numpy_helper.from_array(weight.T.copy(), dq.input[0]))
        axis = next((a for a in dq.attribute if a.name == "axis"), None)
        if axis is not None:
            axis.i = 1 - (axis.i % 2)
        elif numpy_helper.to_array(inits[dq.input[1]]).ndim == 1:
            dq.attribute.append(onnx.helper.make_attribute("axis", 0))  # default 1 moves to 0
        for user in consumers.get(node.output[0], []):
            user.input[:] = [dq.output[0] if n == node.output[0] else n for n in user.input]
        graph.node.remove(node)
        done += 1
    return done


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def drop_relu_before_quantize(model: onnx.ModelProto) -> int:
    """Remove Relu -> QuantizeLinear where the zero point is the type's lowest value."""
    graph = model.graph
    consts = _constants(graph)
    consumers = _consumers(graph)
    dropped = 0
    for node in list(graph.node):
        if node.op_type != "Relu":
            continue
        users = consumers.get(node.output[0], [])
        if len(users) != 1 or users[0].op_type != "QuantizeLinear":
            continue
        zp = consts.get(users[0].input[2]) if len(users[0].input) > 2 else None
        if zp is None or int(np.min(zp)) != np.iinfo(zp.dtype).min:
            continue
        users[0].input[0] = node.input[0]
        graph.node.remove(node)
        dropped += 1
    return dropped


def inline_constant_identities(model: onnx.ModelProto) -> int:
    """The exporter shares constants through Identity nodes; point consumers at the source."""
    graph = model.graph
    consts = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias = {
        n.output[0]: n.input[0]
        for n in graph.node
        if n.op_type == "Identity" and n.input[0] in consts
    }
    alias = {k: v for k, v in alias.items() if k not in outputs}
    for node in list(graph.node):
        if node.op_type == "Identity" and node.output[0] in alias:
            graph.node.remove(node)
        else:
            node.input[:] = [alias.get(n, n) for n in node.input]
    return len(alias)


def drop_zero_weight_zero_points(model: onnx.ModelProto) -> int:
    """Symmetric int8 weights have zero points of 0, the ONNX default: leave the input out."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    dropped = 0
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3:
            continue
        w, zp = inits.get(node.input[0]), inits.get(node.input[2])
        if w is None or zp is None or len(w.dims) < 2:
            continue
        if not numpy_helper.to_array(zp).any():
            del node.input[2]
            dropped += 1
    _drop_unused(graph)
    return dropped


def compact_names(model: onnx.ModelProto) -> None:
    """Short names for nodes and internal tensors: the exporter's scoped names ("/blocks/
    blocks.0/conv1/...") are a tenth of a small int8 file. Inputs and outputs keep theirs."""
    graph = model.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    mapping: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return mapping.setdefault(name, f"t{len(mapping)}")

    for init in graph.initializer:
        init.name = short(init.name)
    for node in graph.node:
        node.name = ""
        node.doc_string = ""
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    for value in graph.value_info:
        value.name = short(value.name)


def _drop_unused(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    for node in list(graph.node):
        if node.op_type == "Constant" and node.output[0] not in used:
            graph.node.remove(node)
    for init in list(graph.initializer):
        if init.name not in used:
            graph.initializer.remove(init)
