"""Structured pruning with real surgery: whole channels removed, every dependent layer shrunk.

The model is traced with torch.fx and its tensors are grouped into *channel spaces*. A conv,
linear or recurrent layer opens one with its output channels (an attention module with its
output projection). Every tensor also carries the *axis* its channels lie on: dim 1 for a
conv's output (batch, channels, ...), the last dim for a linear layer's (batch, tokens,
features) and a GRU/LSTM's. A layer consumes a space only on the axis it reads (a conv dim 1,
a linear layer the last dim), so a conv1d's channels never reach a linear layer that reads its
time steps.

A space is followed through ops that leave its axis whole: activations and dropout; batch
norm, pooling and depthwise convs on channel-first tensors (their per-channel entries and
filters go with the channels); reductions, softmaxes and indexing over other dims
(``out[:, -1]``, ``out.mean(1)``); transposes; reshapes that keep the axis (a flatten after
pooling, ``view(b, c, 1, 1)``). Additions and multiplications merge the spaces of their
operands: both sides of a residual add, or a squeeze-and-excitation gate (B, C, 1, 1) and the
features (B, C, H, W) it scales, must keep the same channels. An operand of size 1 on the axis
(attention-pooling weights (B, L, 1)) broadcasts and is left alone.

A space is pruned as one unit: its producers lose output filters, its batch norms entries, its
depthwise convs filters, its consumers input channels. A space that reaches an op we cannot
follow (concatenation, layer norm, grouped convs, reshapes across the axis, the model output)
is kept whole and reported, never cut blindly; the residual stream of a transformer stays
whole that way (its layer norms pin it), while its feed-forward units are pruned.

A module that only routes channels (a ResNet option-A shortcut: subsample, then zero-pad) is
followed through a small protocol: ``channel_sources()`` says which input channel each output
carries (-1 for zeros) and ``rerouted(sources, c_in)`` builds the same op between pruned
channel sets. Its input and output spaces are then pruned independently, so a ResNet's
residual channels shrink in every stage, not only the inner conv of each block.

Attention heads: torch's attention modules are first rewritten as ``MultiHeadAttention``
(``models/convert.py``), which the tracer keeps whole (its query is read by q_proj, its output
made by out_proj). ``ChannelPrune.heads`` removes that share of each module's heads, ranked by
Michel et al.'s (2019) importance when data is given (``head_importance``), else by the norm of
each head's weights.

Recurrent layers (unidirectional ``nn.GRU``/``nn.LSTM``/``nn.RNN``) are leaves that read their
input on the last axis and open a space of hidden units for their output and final state. A
hidden unit is removed from every gate block; all layers keep the same number of units (they
share ``hidden_size``): the last layer's units are the space's, inner layers keep their own
strongest units.

Channels are ranked by the L1 or L2 norm of their filters (summed over a space's producers and
depthwise convs) or by |batch-norm scale| (network slimming, Liu et al., 2017; train with
``TrainConfig.bn_l1``).
"""

from __future__ import annotations

import copy
import inspect
import math
import operator
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from dlforge.compress.config import ChannelPrune
from dlforge.models.attention import MultiHeadAttention
from dlforge.models.convert import unpack_attention

CONV = (nn.Conv1d, nn.Conv2d)
BN = (nn.BatchNorm1d, nn.BatchNorm2d)
RNN = (nn.GRU, nn.LSTM, nn.RNN)

# What each op does to a tensor's channels; the analysis has one handler per kind.
ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid,
    nn.Sigmoid, nn.Tanh, nn.Dropout, nn.Identity,
)  # fmt: skip
CHANNEL_FIRST_MODULES = (  # these work on (batch, channels, ...) and keep every channel
    *BN, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AvgPool1d, nn.AvgPool2d,
    nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)  # fmt: skip
FUNCTION_KINDS: dict[Any, str] = {
    **dict.fromkeys([F.relu, torch.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.hardswish,
                     F.hardsigmoid, torch.sigmoid, torch.tanh, F.dropout], "elementwise"),
    **dict.fromkeys([F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_max_pool1d,
                     F.adaptive_max_pool2d, F.avg_pool1d, F.avg_pool2d, F.max_pool1d,
                     F.max_pool2d], "channel_first"),
    **dict.fromkeys([operator.add, operator.iadd, operator.sub, operator.isub, operator.mul,
                     operator.imul, operator.truediv, operator.itruediv, torch.add, torch.sub,
                     torch.mul, torch.div], "binary"),
    **dict.fromkeys([torch.mean, torch.sum, torch.amax, torch.amin], "reduce"),
    **dict.fromkeys([F.softmax, torch.softmax, F.log_softmax, torch.log_softmax], "softmax"),
    **dict.fromkeys([torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze], "reshape"),
    **dict.fromkeys([torch.transpose, torch.permute], "transpose"),
    operator.getitem: "getitem",
    getattr: "shape",  # x.shape
}  # fmt: skip
METHOD_KINDS: dict[str, str] = {
    **dict.fromkeys(["relu", "sigmoid", "tanh", "contiguous", "clone", "detach", "float", "to"],
                    "elementwise"),
    **dict.fromkeys(["add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"], "binary"),
    **dict.fromkeys(["mean", "sum", "amax", "amin"], "reduce"),
    **dict.fromkeys(["softmax", "log_softmax"], "softmax"),
    **dict.fromkeys(["flatten", "view", "reshape", "squeeze", "unsqueeze"], "reshape"),
    **dict.fromkeys(["transpose", "permute"], "transpose"),
    **dict.fromkeys(["size", "dim"], "shape"),
}  # fmt: skip
SIZE_ATTRIBUTES = {"shape", "ndim", "dtype", "device"}  # getattr(x, ...) that are no tensors


@dataclass
class ChannelSpace:
    producers: list[str] = field(default_factory=list)  # layers whose output channels these are
    consumers: list[tuple[str, int]] = field(default_factory=list)  # (layer, features per channel)
    norms: list[str] = field(default_factory=list)  # batch norms on these channels
    depthwise: list[str] = field(default_factory=list)  # depthwise convs, one filter per channel
    routes_out: list[str] = field(default_factory=list)  # routing modules reading these channels
    routes_in: list[tuple[str, int]] = field(default_factory=list)  # (router, its input channels)
    channels: int = 0
    pinned: str | None = None  # why it cannot be pruned

    def absorb(self, other: ChannelSpace) -> None:
        for name in ("producers", "consumers", "norms", "depthwise", "routes_out", "routes_in"):
            getattr(self, name).extend(getattr(other, name))
        self.pinned = self.pinned or other.pinned


@dataclass
class StructuredResult:
    model: nn.Module
    kept: dict[str, int]  # a space (named by its first producer) -> channels kept
    removed: dict[str, int]
    pinned: dict[str, str]
    macs_before: int = 0
    macs_after: int = 0
    heads_kept: dict[str, int] = field(default_factory=dict)  # attention module -> heads kept
    heads_removed: dict[str, int] = field(default_factory=dict)

    @property
    def macs_removed(self) -> float:
        """The share of the multiply-accumulates ``count_macs`` counts that the surgery removed."""
        return 1 - self.macs_after / self.macs_before if self.macs_before else 0.0


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, a: int) -> int:
        self.parent.setdefault(a, a)
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        self.parent[rb] = ra
        return ra


def _routes(module: nn.Module) -> bool:
    return callable(getattr(module, "channel_sources", None)) and callable(
        getattr(module, "rerouted", None)
    )


class _Tracer(fx.Tracer):
    """Keeps channel-routing and attention modules whole, so the analysis sees each as one op
    (torch.nn modules such as GRU and LSTM are leaves already)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (
            _routes(m)
            or isinstance(m, MultiHeadAttention)
            or super().is_leaf_module(m, module_qualified_name)
        )


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.GraphModule(model, _Tracer().trace(model))
    except Exception as exc:  # fx raises many types for data-dependent control flow
        raise ValueError(
            f"cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {exc}); "
            "models with data-dependent Python control flow must be made traceable first"
        ) from None


@dataclass(frozen=True)
class _Chan:
    """Where a tensor's channels are: their space, the dim they lie on, and how many features
    each channel spans on that dim (more than 1 after flattening a conv's output)."""

    sid: int
    axis: int
    factor: int = 1
    layers: int = 0  # > 1: dim 0 stacks a recurrent net's layers; only the last is this space


# A node's value: a _Chan, None (no channels followed), or a tuple of values (a module's outputs).
_Value = Any


def _shape(arg: Any) -> tuple[int, ...] | None:
    meta = arg.meta.get("tensor_meta") if isinstance(arg, fx.Node) else None
    return tuple(int(s) for s in meta.shape) if isinstance(meta, TensorMetadata) else None


def _ndim(arg: Any) -> int:
    shape = _shape(arg)
    return len(shape) if shape is not None else 0


def _arg(node: fx.Node, position: int, name: str, default: Any = None) -> Any:
    """A call's argument given by position or keyword (positions count ``self`` for methods)."""
    return node.args[position] if len(node.args) > position else node.kwargs.get(name, default)


class _Analysis:
    """One pass over the traced graph: each node's output gets a value saying where its
    channels are; layers register with the spaces they produce, read or normalise."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.modules = dict(gm.named_modules())
        self.uf = _UnionFind()
        self.spaces: dict[int, ChannelSpace] = {}
        self.vals: dict[fx.Node, _Value] = {}

    def run(self, graph: fx.Graph) -> dict[int, ChannelSpace]:
        for node in graph.nodes:
            self.vals[node] = self.visit(node)
        return {sid: s for sid, s in self.spaces.items() if self.uf.find(sid) == sid}

    # --- bookkeeping -------------------------------------------------------------------------

    def space(self, sid: int) -> ChannelSpace:
        return self.spaces[self.uf.find(sid)]

    def new_space(self, channels: int, producer: str | None) -> int:
        sid = len(self.spaces)
        self.spaces[sid] = ChannelSpace(producers=[producer] if producer else [], channels=channels)
        return sid

    def merge(self, a: int, b: int) -> int:
        ra, rb = self.uf.find(a), self.uf.find(b)
        if ra != rb:
            self.uf.union(ra, rb)
            self.spaces[ra].absorb(self.spaces[rb])
        return ra

    def pin(self, value: _Value, why: str) -> None:
        if isinstance(value, tuple):
            for v in value:
                self.pin(v, why)
        elif isinstance(value, _Chan):
            space = self.space(value.sid)
            space.pinned = space.pinned or why

    def pin_inputs(self, node: fx.Node, why: str, keep: Any = None) -> None:
        for arg in node.all_input_nodes:
            if arg is not keep:
                self.pin(self.vals.get(arg), why)

    def op(self, node: fx.Node) -> str:
        return _op_name(node, self.modules)

    def chan(self, arg: Any, node: fx.Node) -> _Chan | None:
        """The channels of a plain tensor argument of ``node``; a tuple or a stack of
        recurrent layers used this way cannot be followed, and is pinned."""
        value = self.vals.get(arg) if isinstance(arg, fx.Node) else None
        if isinstance(value, _Chan) and value.layers <= 1:
            return value
        self.pin(value, f"used by {self.op(node)}")
        return None

    def consume(self, c: _Chan | None, layer: str, reads: int) -> None:
        """``layer`` reads dim ``reads`` of a tensor: it consumes the channels found there."""
        if c is None:
            return
        if c.axis != reads:
            self.pin(c, f"{layer} reads dim {reads}, the channels are on dim {c.axis}")
        else:
            self.space(c.sid).consumers.append((layer, c.factor))

    # --- dispatch ----------------------------------------------------------------------------

    def visit(self, node: fx.Node) -> _Value:
        if node.op in ("placeholder", "get_attr"):
            return None
        if node.op == "output":
            self.pin_inputs(node, "feeds the model output")
            return None
        kind = _kind(node, self.modules)
        handler = getattr(self, f"on_{kind}") if kind else None
        if handler is None:
            self.pin_inputs(node, f"used by {self.op(node)}")
            return None
        return handler(node)

    # --- handlers, one per kind of op --------------------------------------------------------

    def on_layer(self, node: fx.Node) -> _Value:
        name, m = str(node.target), self.modules[str(node.target)]
        c = self.chan(node.args[0], node)
        self.pin_inputs(node, f"used by {self.op(node)}", keep=node.args[0])
        if isinstance(m, CONV) and m.groups != 1:
            return self.grouped(name, m, c)
        conv = isinstance(m, CONV)
        self.consume(c, name, 1 if conv else _ndim(node.args[0]) - 1)
        channels = m.out_channels if conv else m.out_features
        return _Chan(self.new_space(channels, name), 1 if conv else _ndim(node) - 1)

    def grouped(self, name: str, m: Any, c: _Chan | None) -> _Value:
        if m.groups == m.in_channels == m.out_channels:  # depthwise: channel i -> channel i
            if c is None:
                return None
            if c.axis != 1 or c.factor != 1:
                self.pin(c, f"depthwise conv {name} works on dim 1, the channels are elsewhere")
                return None
            self.space(c.sid).depthwise.append(name)
            return c
        self.pin(c, f"grouped conv {name} (groups={m.groups}) ties its channels in groups")
        return None

    def on_router(self, node: fx.Node) -> _Value:
        name, router = str(node.target), self.modules[str(node.target)]
        c = self.chan(node.args[0], node)
        if c is not None and (c.axis != 1 or c.factor != 1):
            self.pin(c, f"router {name} works on dim 1, the channels are elsewhere")
        elif c is not None:
            self.space(c.sid).routes_out.append(name)
        sid = self.new_space(len(router.channel_sources()), None)
        n_in = (_shape(node.args[0]) or (0, 0))[1]
        self.spaces[sid].routes_in.append((name, n_in))
        return _Chan(sid, 1)

    def on_attention(self, node: fx.Node) -> _Value:
        """A ``MultiHeadAttention``: q/k/v_proj read query/key/value, out_proj makes its output."""
        name, m = str(node.target), self.modules[str(node.target)]
        bound = inspect.signature(m.forward).bind(*node.args, **node.kwargs).arguments
        query = bound["query"]
        key = query if bound.get("key") is None else bound["key"]
        value = key if bound.get("value") is None else bound["value"]
        readers: dict[Any, list[str]] = {}
        for arg, proj in ((query, "q_proj"), (key, "k_proj"), (value, "v_proj")):
            readers.setdefault(arg, []).append(proj)
        if m.gate is not None:
            readers[query].append("gate")
        for arg, projs in readers.items():
            c = self.chan(arg, node)
            for proj in projs:
                self.consume(c, f"{name}.{proj}", _ndim(arg) - 1)
        for arg in node.all_input_nodes:  # masks and the like
            if arg not in readers:
                self.pin(self.vals.get(arg), f"used by {self.op(node)}")
        out = self.new_space(m.out_proj.out_features, f"{name}.out_proj")
        return (_Chan(out, _ndim(query) - 1), None)

    def on_recurrent(self, node: fx.Node) -> _Value:
        """A GRU/LSTM/RNN: reads its input's last dim, outputs ``(out, h_n)`` (LSTM:
        ``(out, (h_n, c_n))``) with hidden units on the last dim; ``h_n`` stacks the layers."""
        name, m = str(node.target), self.modules[str(node.target)]
        x = node.args[0]
        c = self.chan(x, node)
        axis = _ndim(x) - 1  # batched or not, the input, out and h_n have features last
        problem = _recurrent_problem(name, m, node)
        if problem:  # its input and outputs are kept whole, and reported
            self.pin_inputs(node, problem)
            width = (m.proj_size or m.hidden_size) * (2 if m.bidirectional else 1)
            sid = self.new_space(width, name)
            self.spaces[sid].pinned = problem
            return (_Chan(sid, axis), None)
        self.consume(c, name, axis)
        sid = self.new_space(m.hidden_size, name)
        state = _Chan(sid, axis, layers=m.num_layers)
        return (_Chan(sid, axis), (state, state) if isinstance(m, nn.LSTM) else state)

    def on_elementwise(self, node: fx.Node) -> _Value:
        self.pin_inputs(node, f"used by {self.op(node)}", keep=node.args[0])
        return self.chan(node.args[0], node)

    def on_channel_first(self, node: fx.Node) -> _Value:
        c = self.on_elementwise(node)
        if c is None:
            return None
        if c.axis != 1 or c.factor != 1:
            self.pin(c, f"{self.op(node)} works on dim 1, the channels are on dim {c.axis}")
            return None
        if node.op == "call_module" and isinstance(self.modules[str(node.target)], BN):
            self.space(c.sid).norms.append(str(node.target))
        return c

    def on_binary(self, node: fx.Node) -> _Value:
        """An elementwise sum, difference, product or quotient: the operands that carry the
        output's channels are merged into one space; others must broadcast over them."""
        out = _shape(node)
        operands = [a for a in (*node.args[:2], node.kwargs.get("other")) if isinstance(a, fx.Node)]
        unknown = [a.name for a in operands if self.vals.get(a) is None]
        why = f"combined by {self.op(node)} ({node.name}) with a tensor we cannot follow"
        why += f" ({', '.join(unknown)})" if unknown else ""
        if out is None:
            self.pin_inputs(node, why)
            return None
        followed: list[tuple[_Chan, int]] = []  # (channels, their dim in the output)
        others: list[tuple[int, ...]] = []  # shapes of operands without channels
        for a in operands:
            shape, value = _shape(a), self.vals.get(a)
            if shape is None:
                continue  # a number from a shape query
            c = self.chan(a, node) if value is not None else None
            if c is not None:
                dim = c.axis + len(out) - len(shape)
                if shape[c.axis] == 1 < out[dim]:
                    continue  # a single channel broadcast over the others (nothing to prune)
                followed.append((c, dim))
            elif value is None:
                others.append(shape)
        if not followed:
            return None
        dims, factors = {d for _, d in followed}, {c.factor for c, _ in followed}
        dim = min(dims)
        broadcast = all(
            dim - (len(out) - len(s)) < 0 or s[dim - (len(out) - len(s))] == 1 for s in others
        )
        if len(dims) > 1 or len(factors) > 1 or not broadcast:
            for c, _ in followed:
                self.pin(c, why)
            return None
        sid = followed[0][0].sid
        for c, _ in followed[1:]:
            sid = self.merge(sid, c.sid)
        return _Chan(sid, dim, factors.pop())

    def on_getitem(self, node: fx.Node) -> _Value:
        src, index = node.args[0], node.args[1]
        value = self.vals.get(src) if isinstance(src, fx.Node) else None
        if isinstance(value, tuple):  # one output of a module that returns several
            if isinstance(index, int):
                return value[index]
            self.pin(value, f"used by {self.op(node)}")
            return None
        if not isinstance(value, _Chan):
            return None
        why = f"indexed across its channels ({node.name})"
        if value.layers > 1:  # h_n: only the last layer's units are the space's
            first = index[0] if isinstance(index, tuple) and index else index
            if first not in (-1, value.layers - 1):
                self.pin(value, f"{why}: a layer other than the last of a stacked RNN")
                return None
            value = replace(value, layers=0)
        axis = _indexed_axis(value.axis, index, _ndim(src))
        if axis is None:
            self.pin(value, why)
            return None
        return replace(value, axis=axis)

    def on_reduce(self, node: fx.Node) -> _Value:
        c = self.chan(node.args[0], node)
        if c is None:
            return None
        dims, n = _arg(node, 1, "dim"), _ndim(node.args[0])
        keepdim = bool(_arg(node, 2, "keepdim", False))
        dims = dims if isinstance(dims, (tuple, list)) else (dims,)
        if not all(isinstance(d, int) for d in dims) or c.axis in {d % n for d in dims}:
            self.pin(c, f"reduced over its channels by {self.op(node)}")
            return None
        return replace(c, axis=c.axis if keepdim else c.axis - sum(d % n < c.axis for d in dims))

    def on_softmax(self, node: fx.Node) -> _Value:
        c = self.chan(node.args[0], node)
        if c is None:
            return None
        if node.op == "call_module":
            dim = getattr(self.modules[str(node.target)], "dim", None)
        else:
            dim = _arg(node, 1, "dim")
        if not isinstance(dim, int) or dim % _ndim(node.args[0]) == c.axis:
            self.pin(c, f"normalised across its channels by {self.op(node)}")
            return None
        return c

    def on_transpose(self, node: fx.Node) -> _Value:
        c = self.chan(node.args[0], node)
        if c is None:
            return None
        n = _ndim(node.args[0])
        if node.target in ("transpose", torch.transpose):
            dims: Any = [_arg(node, 1, "dim0"), _arg(node, 2, "dim1")]
        else:  # permute(*dims) or permute(dims)
            rest: Any = node.args[1:] or (node.kwargs.get("dims"),)
            dims = list(rest[0] if isinstance(rest[0], (tuple, list)) else rest)
        if not all(isinstance(d, int) for d in dims):
            self.pin(c, f"moved by {self.op(node)} to a dim known at run time only")
            return None
        if len(dims) == 2:  # transpose: swap two dims
            order = list(range(n))
            order[dims[0] % n], order[dims[1] % n] = dims[1] % n, dims[0] % n
        else:
            order = [d % n for d in dims]
        return replace(c, axis=order.index(c.axis))

    def on_reshape(self, node: fx.Node) -> _Value:
        """flatten/view/reshape/squeeze/unsqueeze: followed when the channel dim survives whole,
        alone or merged with the dims after it (the flatten after a conv)."""
        c = self.chan(node.args[0], node)
        if c is None:
            return None
        channels = self.space(c.sid).channels
        found = _reshaped_axis(c.axis, _shape(node.args[0]), _shape(node))
        if found is None:
            self.pin(c, f"reshaped across its channels by {self.op(node)}")
            return None
        axis, block = found
        if _fixed_size(node, axis):
            self.pin(c, f"reshaped to a fixed size by {self.op(node)}")
            return None
        return replace(c, axis=axis, factor=block // channels)

    def on_shape(self, node: fx.Node) -> _Value:
        """x.shape, x.size(), x.dim(): read at run time, nothing to follow; other attributes
        (x.T) may be tensors, and are not followed."""
        if node.target is getattr and node.args[1] not in SIZE_ATTRIBUTES:
            self.pin_inputs(node, f"read as .{node.args[1]}")
        return None


def _kind(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    if node.op == "call_method":
        return METHOD_KINDS.get(str(node.target))
    if node.op != "call_module":
        try:
            return FUNCTION_KINDS.get(node.target)
        except TypeError:  # an unhashable target
            return None
    m = modules[str(node.target)]
    kinds: list[tuple[Any, str]] = [
        ((*CONV, nn.Linear), "layer"), (MultiHeadAttention, "attention"), (RNN, "recurrent"),
        (ELEMENTWISE_MODULES, "elementwise"), (CHANNEL_FIRST_MODULES, "channel_first"),
        ((nn.Softmax, nn.LogSoftmax), "softmax"), (nn.Flatten, "reshape"),
    ]  # fmt: skip
    if _routes(m):
        return "router"
    return next((kind for types, kind in kinds if isinstance(m, types)), None)


def _recurrent_problem(name: str, m: Any, node: fx.Node) -> str | None:
    kind = type(m).__name__
    if _shape(node.args[0]) is None:
        return f"{kind} {name} reads a packed sequence"
    if m.bidirectional:
        return f"bidirectional {kind} {name} (its two directions are not pruned)"
    if getattr(m, "proj_size", 0):
        return f"{kind} {name} with proj_size (projected outputs are not pruned)"
    if _arg(node, 1, "hx") is not None:
        return f"{kind} {name} is given an initial state"
    return None


def _indexed_axis(axis: int, index: Any, ndim: int) -> int | None:
    """Where dim ``axis`` lands in ``x[index]``; None when the index cuts into it."""
    items = index if isinstance(index, tuple) else (index,)
    if any(isinstance(i, (list, torch.Tensor)) or _shape(i) is not None for i in items):
        return None  # advanced indexing with a tensor
    used = sum(1 for i in items if i is not None and i is not Ellipsis)
    expanded: list[Any] = []
    for i in items:
        expanded += [slice(None)] * (ndim - used) if i is Ellipsis else [i]
    dim = out = 0
    for i in expanded:
        if i is None:  # a new dim
            out += 1
            continue
        if dim == axis:
            return out if isinstance(i, slice) and i == slice(None) else None
        dim += 1
        out += isinstance(i, slice)  # an integer index drops its dim
    return out + axis - dim  # the channels lie past the index


def _reshaped_axis(
    axis: int, before: tuple[int, ...] | None, after: tuple[int, ...] | None
) -> tuple[int, int] | None:
    """(dim, size) that the channel dim ``axis`` becomes after a reshape: the same elements
    before it, and the channel dim alone or merged with whole dims after it; None otherwise.
    Dim 0 (the batch) never takes the channels: an example of batch 1 cannot tell them apart."""
    if before is None or after is None or axis < 1:
        return None
    outer = math.prod(before[:axis])
    for dim in range(1, len(after)):
        if math.prod(after[:dim]) != outer:
            continue
        block, j = before[axis], axis + 1
        while block < after[dim] and j < len(before):
            block, j = block * before[j], j + 1
        if block == after[dim]:
            return dim, block
    return None


def _fixed_size(node: fx.Node, dim: int) -> bool:
    """Whether a view/reshape spells the channel dim's size as a number (the pruned model
    would then fail), rather than -1 or a size read from the tensor."""
    if node.target not in ("view", "reshape", torch.reshape):
        return False
    sizes: Any = node.args[1:]
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = tuple(sizes[0])
    return len(sizes) > dim and isinstance(sizes[dim], int) and sizes[dim] != -1


def channel_spaces(model: nn.Module, example: torch.Tensor) -> dict[int, ChannelSpace]:
    """Analyse ``model``: which layers' channels must be pruned together, and which cannot be."""
    gm = _trace(model)
    ShapeProp(gm).propagate(example)
    return _Analysis(gm).run(gm.graph)


def _op_name(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """A readable name for what a node calls (never an object's repr with its address)."""
    if node.op == "call_module":
        return f"module {node.target} ({type(modules[str(node.target)]).__name__})"
    if node.op == "call_method":
        return f"method .{node.target}()"
    target = node.target
    name = getattr(target, "__name__", None)
    if name is None:
        return type(target).__name__
    for prefix, namespace in (("torch", torch), ("F", F), ("operator", operator)):
        if getattr(namespace, name, None) is target:
            return f"{prefix}.{name}"
    return f"{getattr(target, '__module__', None) or '?'}.{name}"


# --- ranking -------------------------------------------------------------------------------------


def _unit_rows(rnn: Any, layer: int) -> torch.Tensor:
    """Each hidden unit's rows in every gate block of one recurrent layer (units x weights)."""
    h = rnn.hidden_size
    parts = [getattr(rnn, f"{kind}_l{layer}").detach() for kind in ("weight_ih", "weight_hh")]
    return torch.cat([w.reshape(-1, h, w.shape[1]).transpose(0, 1).flatten(1) for w in parts], 1)


def _filters(layer: Any) -> torch.Tensor:
    """A layer's weights per output channel (channels x weights)."""
    if isinstance(layer, RNN):
        return _unit_rows(layer, layer.num_layers - 1)  # the last layer's units are the space's
    return layer.weight.detach().flatten(1)


def _norms(w: torch.Tensor, criterion: str) -> torch.Tensor:
    return w.abs().sum(1) if criterion == "l1" else w.pow(2).sum(1).sqrt()


def _scores(model: nn.Module, space: ChannelSpace, criterion: str) -> torch.Tensor:
    score = torch.zeros(space.channels)
    if criterion == "bn_scale":
        if not space.norms:
            raise ValueError(f"bn_scale ranking needs a batch norm after {space.producers}")
        for name in space.norms:
            bn: Any = model.get_submodule(name)
            score += bn.weight.detach().abs()
        return score
    for name in space.producers + space.depthwise:
        score += _norms(_filters(model.get_submodule(name)), criterion)
    return score


# --- surgery -------------------------------------------------------------------------------------


@torch.no_grad()
def _shrink_out(layer: Any, keep: torch.Tensor) -> None:  # a conv, linear or recurrent layer
    if isinstance(layer, RNN):
        _shrink_hidden(layer, keep)
        return
    layer.weight = nn.Parameter(layer.weight[keep].clone())
    if layer.bias is not None:
        layer.bias = nn.Parameter(layer.bias[keep].clone())
    if isinstance(layer, nn.Linear):
        layer.out_features = len(keep)
    else:
        layer.out_channels = len(keep)


@torch.no_grad()
def _shrink_in(layer: Any, keep: torch.Tensor, factor: int) -> None:
    idx = (keep[:, None] * factor + torch.arange(factor)[None, :]).flatten() if factor > 1 else keep
    if isinstance(layer, RNN):
        _shrink_rnn_input(layer, idx)
        return
    layer.weight = nn.Parameter(layer.weight[:, idx].clone())
    if isinstance(layer, nn.Linear):
        layer.in_features = len(idx)
    else:
        layer.in_channels = len(idx)


@torch.no_grad()
def _shrink_rnn_input(rnn: Any, idx: torch.Tensor) -> None:
    rnn.weight_ih_l0 = nn.Parameter(rnn.weight_ih_l0[:, idx].clone())  # the first layer reads it
    rnn.input_size = len(idx)
    rnn._init_flat_weights()


@torch.no_grad()
def _shrink_depthwise(conv: Any, keep: torch.Tensor) -> None:
    _shrink_out(conv, keep)
    conv.in_channels = conv.groups = len(keep)


@torch.no_grad()
def _shrink_hidden(rnn: Any, keep: torch.Tensor) -> None:
    """Keep hidden units ``keep`` of the last layer and as many of each inner layer (its own
    strongest by L2 norm): their rows in every gate block (GRU r, z, n; LSTM i, f, g, o), their
    columns in the recurrent weights and in the next layer's input weights."""
    h, n = rnn.hidden_size, len(keep)
    inner = [_norms(_unit_rows(rnn, layer), "l2") for layer in range(rnn.num_layers - 1)]
    keeps = [torch.sort(torch.topk(s, n).indices).values for s in inner] + [keep]
    gates = rnn.weight_ih_l0.shape[0] // h
    for layer, units in enumerate(keeps):
        rows = (torch.arange(gates)[:, None] * h + units[None, :]).flatten()
        w_ih = getattr(rnn, f"weight_ih_l{layer}")[rows]
        if layer > 0:
            w_ih = w_ih[:, keeps[layer - 1]]
        setattr(rnn, f"weight_ih_l{layer}", nn.Parameter(w_ih.clone()))
        w_hh = getattr(rnn, f"weight_hh_l{layer}")[rows][:, units]
        setattr(rnn, f"weight_hh_l{layer}", nn.Parameter(w_hh.clone()))
        if rnn.bias:
            for kind in ("bias_ih", "bias_hh"):
                b = getattr(rnn, f"{kind}_l{layer}")[rows]
                setattr(rnn, f"{kind}_l{layer}", nn.Parameter(b.clone()))
    rnn.hidden_size = n
    rnn._init_flat_weights()  # the module's list of weights for the fused kernel


@torch.no_grad()
def _shrink_bn(bn: Any, keep: torch.Tensor) -> None:
    bn.weight = nn.Parameter(bn.weight[keep].clone())
    bn.bias = nn.Parameter(bn.bias[keep].clone())
    bn.running_mean = bn.running_mean[keep].clone()
    bn.running_var = bn.running_var[keep].clone()
    bn.num_features = len(keep)


# --- attention heads ---------------------------------------------------------------------------


def _attention_modules(model: nn.Module) -> dict[str, MultiHeadAttention]:
    return {n: m for n, m in model.named_modules() if isinstance(m, MultiHeadAttention)}


def head_importance(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
) -> dict[str, torch.Tensor]:
    """Each attention head's importance (Michel et al., 2019): with a gate of 1 multiplied on
    every head's output, |dL/d gate| of each batch's loss, summed over the batches. A head whose
    removal would not change the loss to first order scores 0. Keyed by module name; torch's
    ``nn.MultiheadAttention`` is scored through a rewritten copy (same names)."""
    attns = _attention_modules(model)
    if not attns and any(isinstance(m, nn.MultiheadAttention) for m in model.modules()):
        model = copy.deepcopy(model)
        unpack_attention(model, "head importance")
        attns = _attention_modules(model)
    if not attns:
        return {}
    device = next(model.parameters()).device
    gates = {
        n: torch.ones(m.num_heads, device=device, requires_grad=True) for n, m in attns.items()
    }
    saved = {n: m.head_gate for n, m in attns.items()}
    importance = {n: torch.zeros(m.num_heads) for n, m in attns.items()}
    was_training = model.training
    model.eval()  # no dropout: the gradient of the model that will be pruned
    try:
        for n, m in attns.items():
            m.head_gate = gates[n]
        for x, y in batches:
            loss = loss_fn(model(x.to(device)), y.to(device))
            grads = torch.autograd.grad(loss, list(gates.values()), allow_unused=True)
            for n, g in zip(gates, grads):
                if g is not None:
                    importance[n] += g.detach().abs().cpu()
    finally:
        for n, m in attns.items():
            m.head_gate = saved[n]
        model.train(was_training)
    return importance


def _head_norms(attn: MultiHeadAttention) -> torch.Tensor:
    """The L2 norm of each head's q/k/v rows and output-projection columns."""
    h, d = attn.num_heads, attn.head_dim
    sq = sum(p.weight.detach().reshape(h, d, -1).pow(2).sum((1, 2))
             for p in (attn.q_proj, attn.k_proj, attn.v_proj))  # fmt: skip
    out = attn.out_proj.weight.detach().reshape(-1, h, d).pow(2).sum((0, 2))
    return (sq + out).sqrt()


def _prune_heads(
    model: nn.Module, share: float, importance: dict[str, torch.Tensor] | None
) -> tuple[dict[str, int], dict[str, int]]:
    """Remove ``share`` of every attention module's heads (at least one kept), weakest first."""
    kept: dict[str, int] = {}
    removed: dict[str, int] = {}
    if share <= 0:
        return kept, removed
    for name, attn in _attention_modules(model).items():
        n_keep = max(1, attn.num_heads - round(share * attn.num_heads))
        score = importance[name] if importance and name in importance else _head_norms(attn)
        removed[name] = attn.num_heads - n_keep
        if n_keep < attn.num_heads:
            attn.prune_heads(torch.topk(score, n_keep).indices)
        kept[name] = n_keep
    return kept, removed


# --- the entry point -----------------------------------------------------------------------------


def prune_channels(
    model: nn.Module,
    example: torch.Tensor,
    cfg: ChannelPrune | None = None,
    data: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> StructuredResult:
    """A smaller copy of ``model``: ``amount`` of the channels of every prunable space removed,
    or the uniform amount that removes closest to ``macs_removed`` of the MACs; and ``heads`` of
    each attention module's heads, ranked by ``head_importance`` on ``data`` (batches of
    (x, y)) when given, else by weight norm."""
    cfg = cfg or ChannelPrune()
    model = copy.deepcopy(model).eval()
    unpack_attention(model, "structured pruning", skip_unsupported=cfg.skip_unsupported)
    full = count_macs(model, example)
    importance = head_importance(model, data) if data is not None and cfg.heads > 0 else None
    heads_kept, heads_removed = _prune_heads(model, cfg.heads, importance)
    spaces = channel_spaces(model, example)  # the analysis and ranking do not depend on amount
    scores = {
        sid: _scores(model, s, cfg.criterion)
        for sid, s in spaces.items()
        if not s.pinned and s.channels > 1
    }
    if not scores and not any(heads_removed.values()):
        reasons = "; ".join(f"{_space_name(s)}: {s.pinned}" for s in spaces.values() if s.pinned)
        raise ValueError(f"no channels of {type(model).__name__} can be pruned ({reasons})")

    def cut(amount: float) -> StructuredResult:
        result = _cut(model, spaces, scores, amount, cfg.round_to)
        result.macs_before, result.macs_after = full, count_macs(result.model, example)
        result.heads_kept, result.heads_removed = heads_kept, heads_removed
        return result

    if cfg.macs_removed is None:
        return cut(cfg.amount)
    # A scan, not a bisection: with round_to the removed share moves in steps, and the first
    # amount past the target can overshoot far (ResNet-20 at multiples of 16: 47% or 53%).
    best: tuple[float, StructuredResult] | None = None
    for step in range(1, 39):  # amounts 0.025 .. 0.95; ties keep the smaller amount
        result = cut(step / 40)
        miss = abs(result.macs_removed - cfg.macs_removed)
        if best is None or miss < best[0] - 1e-9:
            best = (miss, result)
    assert best is not None
    if best[0] > MAC_TARGET_TOLERANCE:
        warnings.warn(_missed_target(cfg.macs_removed, best[1], cfg.round_to), stacklevel=2)
    return best[1]


MAC_TARGET_TOLERANCE = 0.05  # a MAC target missed by more than this is reported


def _missed_target(target: float, result: StructuredResult, round_to: int) -> str:
    pinned = "; ".join(f"{k}: {v}" for k, v in list(result.pinned.items())[:4])
    blocks = f" with channels in multiples of {round_to}" if round_to > 1 else ""
    return (
        f"MAC target of {target:.0%} cannot be reached{blocks}: the closest cut removes "
        f"{result.macs_removed:.1%} of the MACs" + (f" (kept whole: {pinned})" if pinned else "")
    )


def _space_name(space: ChannelSpace) -> str:
    if space.producers:
        return space.producers[0]
    return space.routes_in[0][0] if space.routes_in else "?"


def _cut(
    model: nn.Module,
    spaces: dict[int, ChannelSpace],
    scores: dict[int, torch.Tensor],
    amount: float,
    round_to: int,
) -> StructuredResult:
    """The surgery on a copy of ``model``: each scored space keeps its top-scored channels;
    pinned ones (and single channels) stay whole."""
    model = copy.deepcopy(model)
    kept, removed, pinned = {}, {}, {}
    keeps: dict[int, torch.Tensor] = {}  # every space's kept channels, whole ones all
    for sid, space in spaces.items():
        name = _space_name(space)
        if sid not in scores:
            if space.pinned:
                pinned[name] = space.pinned
            keeps[sid] = torch.arange(space.channels)
            continue
        n_keep = _rounded(max(1, space.channels - round(amount * space.channels)), round_to)
        n_keep = min(n_keep, space.channels)
        keeps[sid] = torch.sort(torch.topk(scores[sid], n_keep).indices).values
        kept[name], removed[name] = n_keep, space.channels - n_keep
    # Routers are rewired from their input space's new positions to their output space's.
    new_position: dict[str, torch.Tensor] = {}
    for sid, space in spaces.items():
        for router_name in space.routes_out:
            position = torch.full((space.channels,), -1, dtype=torch.long)
            position[keeps[sid]] = torch.arange(len(keeps[sid]))
            new_position[router_name] = position
    for sid, space in spaces.items():
        keep = keeps[sid]
        if len(keep) < space.channels:
            _shrink_space(model, space, keep)
        for router_name, n_in in space.routes_in:
            position = new_position.get(router_name, torch.arange(n_in))
            router: Any = model.get_submodule(router_name)
            old = router.channel_sources()[keep]
            sources = torch.where(old >= 0, position[old.clamp(min=0)], -1)
            _replace(model, router_name, router.rerouted(sources, int((position >= 0).sum())))
    return StructuredResult(model, kept, removed, pinned)


def _shrink_space(model: nn.Module, space: ChannelSpace, keep: torch.Tensor) -> None:
    for p in space.producers:
        _shrink_out(model.get_submodule(p), keep)
    for b in space.norms:
        _shrink_bn(model.get_submodule(b), keep)
    for d in space.depthwise:
        _shrink_depthwise(model.get_submodule(d), keep)
    for c, factor in space.consumers:
        _shrink_in(model.get_submodule(c), keep, factor)


def _rounded(n: int, step: int) -> int:
    return max(step, step * round(n / step)) if step > 1 else n


# --- multiply-accumulates --------------------------------------------------------------------


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates for one example of ``example``: conv and linear layers; the QK^T and
    AV products of ``MultiHeadAttention`` (so pruned heads show); and the matrix-vector products
    of GRU/LSTM/RNN layers at every step. Elementwise ops, norms and softmaxes are not counted.
    torch's ``nn.MultiheadAttention`` is counted as its rewritten form (it reads its projection
    weights directly, so no layer hook would see them)."""
    from dlforge.models.convert import unpack_attention

    if any(isinstance(m, nn.MultiheadAttention) for m in model.modules()):
        model = copy.deepcopy(model)
        unpack_attention(model, skip_unsupported=True)
    total = 0

    def layer(m: nn.Module, _inputs: Any, out: torch.Tensor) -> None:
        nonlocal total  # each output element costs one weight row (in/groups x kernel) of MACs
        total += out.numel() * m.weight[0].numel()  # type: ignore[index]

    def attention(m: nn.Module, args: Any, kwargs: dict[str, Any], _out: Any) -> None:
        nonlocal total
        total += _attention_macs(m, args, kwargs)

    def recurrent(m: nn.Module, inputs: Any, _out: Any) -> None:
        nonlocal total  # per step, every weight matrix multiplies one vector
        x = inputs[0]
        if isinstance(x, torch.Tensor):
            steps = x.shape[1] if getattr(m, "batch_first", False) and x.dim() == 3 else x.shape[0]
            weights = sum(p.numel() for n, p in m.named_parameters() if n.startswith("weight"))
            total += steps * weights

    handles = []
    for m in model.modules():
        if isinstance(m, (*CONV, nn.Linear)):
            handles.append(m.register_forward_hook(layer))
        elif isinstance(m, MultiHeadAttention):
            handles.append(m.register_forward_hook(attention, with_kwargs=True))
        elif isinstance(m, RNN):
            handles.append(m.register_forward_hook(recurrent))
    try:
        with torch.no_grad():
            model.eval()(example[:1])  # one example: every output element is one example's
    finally:
        for h in handles:
            h.remove()
    return total


def _attention_macs(m: Any, args: Any, kwargs: dict[str, Any]) -> int:
    """QK^T and AV of one example: 2 x heads x query length x key length x head_dim."""
    query = args[0] if args else kwargs["query"]
    key = args[1] if len(args) > 1 else kwargs.get("key")
    key = query if key is None else key
    seq = 1 if m.batch_first else 0
    return 2 * m.num_heads * m.head_dim * query.shape[seq] * key.shape[seq]


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def nm_masks(model: nn.Module, n: int = 2, m: int = 4) -> dict[str, torch.Tensor]:
    """N:M masks (keep the n largest of every m consecutive input weights), e.g. 2:4 sparsity,
    for the conv/linear layers whose input size divides by m; apply with ``prune.apply_masks``."""
    masks = {}
    for name, layer in model.named_modules():
        if not isinstance(layer, (*CONV, nn.Linear)):
            continue
        w = layer.weight.detach()
        flat = w.permute(0, *range(2, w.dim()), 1).reshape(-1, w.shape[1]) if w.dim() > 2 else w
        if flat.shape[1] % m:
            continue
        groups = flat.abs().reshape(flat.shape[0], -1, m)
        keep = torch.zeros_like(groups).scatter_(2, groups.topk(n, dim=2).indices, 1.0)
        mask = keep.reshape(flat.shape)
        if w.dim() > 2:
            mask = mask.reshape(w.shape[0], *w.shape[2:], w.shape[1]).permute(
                0, -1, *range(1, w.dim() - 1)
            )
        masks[name] = mask.contiguous()
    return masks
