"""Deep Compression (Han et al., 2016): prune → fine-tune → k-means weight sharing → Huffman.

The compressed file (``.dc``) is a small binary container of our own; reading it parses bytes
and never runs code. All integers are little-endian; ``varint`` is unsigned LEB128.

====================  =====================================================================
magic, version        ``b"DLDC"``, one byte ``VERSION``
header                varint length + UTF-8 JSON ``{"format", "folded_bn", "meta"}``
layers                varint count, then per conv/linear layer: varint-length UTF-8 name,
                      varint ndim and dims, u8 weight_bits, u8 index_bits, varint entries,
                      the float32 codebook (2^weight_bits values), then two canonical-Huffman
                      streams (cluster codes with the filler symbol 2^weight_bits, and
                      relative-index gaps), each as varint bit count, code-length table
                      (``huffman.pack_lengths``) and the packed bits; both hold ``entries``
                      symbols
dense tensors         varint count, then per tensor (biases, unfolded batch norm, buffers):
                      name, u8 dtype, varint ndim and dims, the raw little-endian bytes
checksum              CRC-32 of everything before it, u32
====================  =====================================================================

The sparse weights use the paper's relative indices: each surviving weight stores the gap to
the previous one in ``index_bits``; a longer gap is bridged with filler entries. Every read is
bounds-checked, and a file that is truncated, corrupt or written for another model raises a
one-line ``CheckpointError`` naming the file. ``storage_account`` says where its bytes go.
"""

from __future__ import annotations

import copy
import json
import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import fx, nn

from dlforge.compress import huffman
from dlforge.compress.config import DeepCompressionConfig
from dlforge.compress.prune import GradualPruner, make_permanent, sparsity
from dlforge.compress.quantize.codebook import (
    SHAREABLE,
    CodebookConfig,
    SharedTensor,
    SharedWeightLayer,
    bake,
    recurrent_matrices,
    share_weights,
    shared_tensors,
)
from dlforge.compress.quantize.fold import fold_batch_norm
from dlforge.train.checkpoint import CheckpointError, atomic_write

if TYPE_CHECKING:
    from dlforge.train.config import FineTune

FORMAT = "dlforge-deep-compression/2"  # /1 was a safetensors container with JSON code tables
MAGIC = b"DLDC"
VERSION = 2
SUFFIX = ".dc"
_CRC = 4  # bytes of the trailing checksum
_MAX_NDIM = 16
_MAX_NAME = 1024  # bytes of a tensor name
_MAX_HEADER = 1 << 20  # bytes of the JSON header (it holds the caller's meta)
_MAX_WEIGHT_BITS = 16  # SharedWeightLayer keeps its codes in int16 at most
_MAX_INDEX_BITS = 32
# dtype code in the file -> (torch dtype, little-endian numpy dtype); floats are stored as fp32
_DTYPES: tuple[tuple[torch.dtype, str], ...] = (
    (torch.float32, "<f4"),
    (torch.int64, "<i8"),
    (torch.int32, "<i4"),
    (torch.int16, "<i2"),
    (torch.int8, "i1"),
    (torch.uint8, "u1"),
    (torch.bool, "?"),
)


@dataclass
class LayerStreams:
    shape: list[int]
    codebook: np.ndarray
    codes: huffman.Encoded
    gaps: huffman.Encoded
    index_bits: int
    weight_bits: int


def encode_layer(layer: SharedWeightLayer | SharedTensor, index_bits: int) -> LayerStreams:
    """Relative-index sparse encoding of the surviving weights, then Huffman on both streams."""
    codes = layer.codes.detach().cpu().flatten().long().numpy()
    if layer.mask is not None:
        positions = np.flatnonzero(layer.mask.detach().cpu().flatten().numpy())
    else:
        positions = np.arange(codes.size)
    filler = 2**layer.bits  # an extra symbol: "no weight here, just skipping"
    max_gap = 2**index_bits - 1
    gap_out, code_out, prev = [], [], -1
    for p in positions.tolist():
        gap = p - prev - 1
        while gap > max_gap:
            gap_out.append(max_gap)
            code_out.append(filler)
            gap -= max_gap + 1
        gap_out.append(gap)
        code_out.append(int(codes[p]))
        prev = p
    return LayerStreams(
        shape=list(layer.codes.shape),
        codebook=layer.centroids.detach().cpu().float().numpy(),
        codes=huffman.encode(np.asarray(code_out, dtype=np.int64)),
        gaps=huffman.encode(np.asarray(gap_out, dtype=np.int64)),
        index_bits=index_bits,
        weight_bits=layer.bits,
    )


def layer_entries(streams: LayerStreams) -> tuple[np.ndarray, np.ndarray]:
    """Decode and check both streams: (cluster codes, weight positions), without allocating
    the weight, so a file can be checked before its shapes are trusted."""
    codes = huffman.decode(streams.codes)
    gaps = huffman.decode(streams.gaps)
    if codes.size != gaps.size:
        raise ValueError(f"{codes.size} cluster codes but {gaps.size} gaps")
    if codes.size and (codes.min() < 0 or codes.max() > 2**streams.weight_bits):
        raise ValueError("a cluster code outside the codebook")
    if gaps.size and (gaps.min() < 0 or gaps.max() >= 2**streams.index_bits):
        raise ValueError(f"a gap wider than {streams.index_bits} bits")
    positions = np.cumsum(gaps + 1) - 1
    if positions.size and int(positions[-1]) >= math.prod(streams.shape):
        raise ValueError(f"the weights run past the layer's {math.prod(streams.shape)} entries")
    return codes, positions


def decode_layer(
    streams: LayerStreams, entries: tuple[np.ndarray, np.ndarray] | None = None
) -> torch.Tensor:
    """The layer's weight: codebook values at the surviving positions, zeros elsewhere;
    ``entries`` is ``layer_entries(streams)`` when the caller has it already."""
    codes, positions = entries if entries is not None else layer_entries(streams)
    keep = codes != 2**streams.weight_bits  # the filler entries only skip
    flat = np.zeros(math.prod(streams.shape), dtype=np.float32)
    flat[positions[keep]] = streams.codebook[codes[keep]]
    return torch.from_numpy(flat.reshape(streams.shape))


# --- writing --------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _text(s: str) -> bytes:
    raw = s.encode("utf-8")
    return _varint(len(raw)) + raw


def _shape(shape: list[int] | tuple[int, ...]) -> bytes:
    return _varint(len(shape)) + b"".join(_varint(d) for d in shape)


def _stream(e: huffman.Encoded) -> bytes:
    return _varint(e.n_bits) + huffman.pack_lengths(e.lengths) + e.data


def _layer_record(name: str, s: LayerStreams) -> bytes:
    assert s.codes.n_symbols == s.gaps.n_symbols
    return b"".join(
        [
            _text(name),
            _shape(s.shape),
            bytes([s.weight_bits, s.index_bits]),
            _varint(s.codes.n_symbols),
            s.codebook.astype("<f4").tobytes(),
            _stream(s.codes),
            _stream(s.gaps),
        ]
    )


def _dense_record(name: str, t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    if t.is_floating_point():
        t = t.float()
    code = next((i for i, (dt, _) in enumerate(_DTYPES) if dt == t.dtype), None)
    if code is None:
        raise TypeError(f"deep compression: cannot store tensor '{name}' of dtype {t.dtype}")
    raw = np.ascontiguousarray(t.numpy(), dtype=_DTYPES[code][1]).tobytes()
    return _text(name) + bytes([code]) + _shape(tuple(t.shape)) + raw


def _dense_tensors(
    model: nn.Module, shared: dict[str, SharedWeightLayer], tensors: dict[str, SharedTensor]
) -> list[bytes]:
    """Every tensor but the shared weights, under the plain model's names."""
    records = []
    # A shared recurrent matrix "gru.weight_hh_l0" lives in "gru.parametrizations.weight_hh_l0.*"
    parametrized = ["{0}.parametrizations.{2}.".format(*name.rpartition(".")) for name in tensors]
    for key, value in model.state_dict().items():
        if any(key.startswith(p) for p in parametrized):
            continue
        owner = next((n for n in shared if key.startswith(f"{n}.")), None)
        if owner is None:
            records.append(_dense_record(key, value))
            continue
        rest = key[len(owner) + 1 :]
        if rest.startswith("layer.") and rest != "layer.weight":  # "<n>.layer.bias" -> "<n>.bias"
            records.append(_dense_record(f"{owner}.{rest[len('layer.') :]}", value))
    return records


def save_compressed(
    model: nn.Module, path: str | Path, cfg: DeepCompressionConfig, meta: dict[str, Any]
) -> Path:
    """Write a model whose conv/linear layers are ``SharedWeightLayer``s and whose recurrent
    matrices carry ``SharedTensor``s (masked) to ``path`` (atomically; ``.dc`` by convention).
    A conv/linear record is named by its layer (its tensor is ``<layer>.weight``), a recurrent
    one by its tensor (``gru.weight_hh_l0``). ``meta`` must be JSON-serialisable."""
    shared = {n: m for n, m in model.named_modules() if isinstance(m, SharedWeightLayer)}
    tensors = shared_tensors(model)
    layers = [
        _layer_record(
            name,
            encode_layer(
                m, cfg.index_bits_linear if isinstance(m.layer, nn.Linear) else cfg.index_bits_conv
            ),
        )
        for name, m in shared.items()
    ]
    layers += [_layer_record(n, encode_layer(t, cfg.index_bits_linear)) for n, t in tensors.items()]
    dense = _dense_tensors(model, shared, tensors)
    header = {"format": FORMAT, "folded_bn": isinstance(model, fx.GraphModule), "meta": meta}
    body = b"".join(
        [
            MAGIC,
            bytes([VERSION]),
            _text(json.dumps(header, separators=(",", ":"))),
            _varint(len(layers)),
            *layers,
            _varint(len(dense)),
            *dense,
        ]
    )
    blob = body + struct.pack("<I", zlib.crc32(body))

    def write(tmp: str) -> None:
        Path(tmp).write_bytes(blob)

    return atomic_write(path, write)


# --- reading --------------------------------------------------------------------------------


class _Reader:
    """Bounds-checked reads from the file's bytes; every failure names the file."""

    def __init__(self, path: Path, data: bytes) -> None:
        self.path, self.view, self.pos = path, memoryview(data), 0
        self.end = len(data) - _CRC  # the checksum is not part of the body

    def error(self, what: str) -> CheckpointError:
        return CheckpointError(f"deep compression file {self.path}: {what}")

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > self.end:
            raise self.error(
                f"truncated: {what} needs {n} bytes at offset {self.pos}, "
                f"{self.end - self.pos} left"
            )
        self.pos += n
        return bytes(self.view[self.pos - n : self.pos])

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def varint(self, what: str) -> int:
        value = 0
        for shift in range(0, 63, 7):  # at most 9 bytes: a 63-bit count is already absurd
            byte = self.u8(what)
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
        raise self.error(f"{what} at offset {self.pos} is not a valid number")

    def text(self, what: str, limit: int = _MAX_NAME) -> str:
        n = self.varint(f"{what} length")
        if n > limit:
            raise self.error(f"{what} at offset {self.pos} claims {n} bytes (at most {limit})")
        raw = self.take(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(f"{what} at offset {self.pos - n} is not UTF-8") from None

    def shape(self, what: str) -> list[int]:
        ndim = self.varint(f"{what} rank")
        if ndim > _MAX_NDIM:
            raise self.error(f"{what} has {ndim} dimensions")
        return [self.varint(f"{what} size") for _ in range(ndim)]

    def stream(self, n_symbols: int, what: str) -> tuple[huffman.Encoded, dict[str, int]]:
        """A Huffman stream, and the bytes of its bit count, table and data."""
        start = self.pos
        n_bits = self.varint(f"{what} bit count")
        table_at = self.pos
        try:
            lengths, self.pos = huffman.unpack_lengths(self.view[: self.end], self.pos)
        except ValueError as exc:
            raise self.error(f"{what} code-length table at offset {table_at}: {exc}") from None
        data = self.take((n_bits + 7) // 8, f"{what} bits")
        spent = {"count": table_at - start, "table": self.pos - len(data) - table_at}
        return huffman.Encoded(data, n_bits, n_symbols, lengths), spent


@dataclass
class _Layer:
    name: str
    streams: LayerStreams
    entries: tuple[np.ndarray, np.ndarray]  # layer_entries(streams), checked while parsing
    parts: dict[str, int]  # bytes of each part of the record; they sum to its size


@dataclass
class _Dense:
    name: str
    tensor: np.ndarray
    data_bytes: int
    overhead_bytes: int


@dataclass
class _Container:
    header: dict[str, Any]
    header_bytes: int  # magic, version, JSON header, the two counts and the checksum
    layers: list[_Layer]
    dense: list[_Dense]
    file_bytes: int


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CheckpointError(
            f"deep compression file {path} could not be read: {exc.strerror or exc}"
        ) from None


def _open(path: Path, data: bytes) -> _Reader:
    """Check magic, version and checksum; returns a reader past the version byte."""
    r = _Reader(path, data)
    if data[: len(MAGIC)] != MAGIC:
        old = data[8:9] == b"{"  # safetensors: a u64 header size, then JSON
        hint = " (a safetensors file: the old format, write it again)" if old else ""
        raise r.error(f"not a Deep Compression file: bad magic{hint}")
    if len(data) < len(MAGIC) + 1 + _CRC:
        raise r.error(f"truncated: {len(data)} bytes")
    if data[len(MAGIC)] != VERSION:
        raise r.error(f"format version {data[len(MAGIC)]}, this reader knows {VERSION}")
    (stored,) = struct.unpack("<I", data[-_CRC:])
    if zlib.crc32(r.view[: r.end]) != stored:
        raise r.error("checksum mismatch: the file is corrupt or truncated")
    r.pos = len(MAGIC) + 1
    return r


def _read_header(r: _Reader) -> dict[str, Any]:
    try:
        header = json.loads(r.text("header", limit=_MAX_HEADER))
    except json.JSONDecodeError as exc:
        raise r.error(f"header is not JSON ({exc.msg})") from None
    ok = (
        isinstance(header, dict)
        and header.get("format") == FORMAT
        and isinstance(header.get("folded_bn"), bool)
        and isinstance(header.get("meta"), dict)
    )
    if not ok:
        raise r.error(f"header is not a {FORMAT} header")
    return header


def _read_layer(r: _Reader) -> _Layer:
    start = r.pos
    name = r.text("layer name")
    what = f"layer {name!r}"
    shape = r.shape(what)
    weight_bits, index_bits = r.u8(f"{what} weight bits"), r.u8(f"{what} index bits")
    if not (1 <= weight_bits <= _MAX_WEIGHT_BITS and 1 <= index_bits <= _MAX_INDEX_BITS):
        raise r.error(f"{what}: {weight_bits} weight bits, {index_bits} index bits")
    n = r.varint(f"{what} entries")
    parts = {"overhead_bytes": r.pos - start}
    codebook = np.frombuffer(r.take(4 * 2**weight_bits, f"{what} codebook"), dtype="<f4")
    codes, codes_spent = r.stream(n, f"{what} cluster codes")
    gaps, gaps_spent = r.stream(n, f"{what} gaps")
    parts["overhead_bytes"] += codes_spent["count"] + gaps_spent["count"]
    parts |= {
        "codebook_bytes": codebook.nbytes,
        "code_bytes": len(codes.data),
        "index_bytes": len(gaps.data),
        "table_bytes": codes_spent["table"] + gaps_spent["table"],
    }
    streams = LayerStreams(shape, codebook.astype(np.float32), codes, gaps, index_bits, weight_bits)
    try:
        entries = layer_entries(streams)  # decoded now: a file is whole before it is used
    except ValueError as exc:
        raise r.error(f"{what}: {exc}") from None
    return _Layer(name, streams, entries, parts)


def _read_dense(r: _Reader) -> _Dense:
    start = r.pos
    name = r.text("tensor name")
    code = r.u8(f"tensor {name!r} dtype")
    if code >= len(_DTYPES):
        raise r.error(f"tensor {name!r}: unknown dtype code {code}")
    shape = r.shape(f"tensor {name!r}")
    overhead = r.pos - start
    dtype = np.dtype(_DTYPES[code][1])
    raw = r.take(math.prod(shape) * dtype.itemsize, f"tensor {name!r} data")
    return _Dense(name, np.frombuffer(raw, dtype=dtype).reshape(shape), len(raw), overhead)


def _parse(path: str | Path) -> _Container:
    """Read and check the whole file (Huffman streams decoded); no model needed."""
    path = Path(path)
    data = _read_file(path)
    r = _open(path, data)
    header = _read_header(r)
    n_layers = r.varint("layer count")
    spent = r.pos  # magic, version, header, layer count
    layers = [_read_layer(r) for _ in range(n_layers)]
    before = r.pos
    n_dense = r.varint("tensor count")
    spent += r.pos - before
    dense = [_read_dense(r) for _ in range(n_dense)]
    if r.pos != r.end:
        raise r.error(f"{r.end - r.pos} unexpected bytes at offset {r.pos}")
    return _Container(header, spent + _CRC, layers, dense, len(data))


def _key(record: str, own: dict[str, torch.Tensor]) -> str:
    """A layer record's tensor: ``<layer>.weight``, or the recurrent matrix it names."""
    return f"{record}.weight" if f"{record}.weight" in own else record


def _check_fits(path: str | Path, c: _Container, own: dict[str, torch.Tensor]) -> None:
    shapes = {_key(x.name, own): list(x.streams.shape) for x in c.layers}
    shapes |= {d.name: list(d.tensor.shape) for d in c.dense}
    missing, unexpected = sorted(set(own) - set(shapes)), sorted(set(shapes) - set(own))
    if missing or unexpected or len(shapes) != len(c.layers) + len(c.dense):
        raise CheckpointError(
            f"deep compression file {path} does not fit the model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    for key, shape in shapes.items():
        if list(own[key].shape) != shape:
            raise CheckpointError(
                f"deep compression file {path}: tensor '{key}' has shape {tuple(shape)}, "
                f"the model expects {tuple(own[key].shape)}"
            )


def load_compressed(path: str | Path, model: nn.Module) -> nn.Module:
    """Decode the file into a new module with ``model``'s architecture (its weights do not
    matter, and ``model`` itself is not changed): a batch-norm-folded copy when the file was
    written that way, else a deep copy. Returned in eval mode. ``CheckpointError`` if the file
    is unreadable, corrupt or does not fit the model."""
    from dlforge.models.convert import unpack_attention

    c = _parse(path)
    model = copy.deepcopy(model)
    unpack_attention(model, skip_unsupported=True)  # as deep_compression() wrote it
    model = fold_batch_norm(model)[0] if c.header["folded_bn"] else model
    own = model.state_dict()
    _check_fits(path, c, own)
    state = {_key(x.name, own): decode_layer(x.streams, x.entries) for x in c.layers}
    # astype copies out of the file's buffer, in native byte order as torch needs
    state |= {
        d.name: torch.from_numpy(d.tensor.astype(d.tensor.dtype.newbyteorder("="))) for d in c.dense
    }
    model.load_state_dict({k: state[k].to(own[k].dtype) for k in own})
    return model.eval()


def storage_account(path: str | Path) -> dict[str, Any]:
    """Where the bytes of the compressed file go, checked by parsing it all.

    The parts sum exactly to the file: ``file_bytes`` = ``header_bytes`` + the layers'
    ``file_bytes`` + ``dense_bytes`` + ``dense_overhead_bytes``.

    - ``file_bytes``: size of the file on disk.
    - ``header_bytes``: magic, version, JSON header (format, folded_bn, meta), the layer and
      tensor counts, and the 4-byte checksum.
    - ``layers``: one row per shared layer: ``params`` (weights), ``entries`` (stored
      entries, fillers included), ``weight_bits``, ``index_bits``, and its bytes:
      ``code_bytes`` (Huffman-coded cluster codes), ``index_bytes`` (Huffman-coded gaps),
      ``codebook_bytes`` (float32 centroids), ``table_bytes`` (both code-length tables),
      ``overhead_bytes`` (name, shape, bit widths, counts), ``file_bytes`` (their sum);
      ``account_bytes`` (the paper-style cost: codes + gaps + codebook + 2 bytes per
      code-table entry) and ``before_huffman_bytes`` (entries at weight_bits + 1 + index_bits
      bits, plus the codebook).
    - ``dense_bytes``: raw data of the dense tensors (biases, unfolded batch norm, buffers);
      ``dense_overhead_bytes``: their names, dtypes and shapes.
    - ``fp32_bytes``: 4 bytes for every parameter and buffer value stored.
    - ``account_bytes``: the layers' ``account_bytes`` plus ``dense_bytes``, the theoretical
      size without any container overhead.
    - ``file_ratio`` = fp32_bytes / file_bytes, ``account_ratio`` = fp32_bytes / account_bytes;
      ``ratio`` is ``file_ratio``.
    """
    c = _parse(path)
    rows = [_account_row(x) for x in c.layers]
    dense_bytes = sum(d.data_bytes for d in c.dense)
    dense_overhead = sum(d.overhead_bytes for d in c.dense)
    file_bytes = c.file_bytes
    total = c.header_bytes + sum(r["file_bytes"] for r in rows) + dense_bytes + dense_overhead
    if total != file_bytes:  # the parser read every byte, so this is a bug, not a bad file
        raise AssertionError(f"storage account of {path}: {total} bytes for {file_bytes}")
    fp32 = 4 * (sum(r["params"] for r in rows) + sum(d.tensor.size for d in c.dense))
    account = sum(r["account_bytes"] for r in rows) + dense_bytes
    return {
        "file_bytes": file_bytes,
        "header_bytes": c.header_bytes,
        "layers": rows,
        "dense_bytes": dense_bytes,
        "dense_overhead_bytes": dense_overhead,
        "fp32_bytes": fp32,
        "account_bytes": account,
        "file_ratio": fp32 / file_bytes,
        "account_ratio": fp32 / account,
        "ratio": fp32 / file_bytes,
    }


def _account_row(x: _Layer) -> dict[str, Any]:
    s, p = x.streams, x.parts
    entries = s.codes.n_symbols
    raw_bits = entries * (s.weight_bits + 1 + s.index_bits)
    # the old account's cost of the code tables: a (symbol, length) byte pair per symbol
    tables = 2 * (len(s.codes.lengths) + len(s.gaps.lengths))
    return {
        "layer": x.name,
        "params": math.prod(s.shape),
        "entries": entries,
        "weight_bits": s.weight_bits,
        "index_bits": s.index_bits,
        **p,
        "file_bytes": sum(p.values()),
        "account_bytes": p["code_bytes"] + p["index_bytes"] + p["codebook_bytes"] + tables,
        "before_huffman_bytes": (raw_bits + 7) // 8 + p["codebook_bytes"],
    }


# --- the pipeline -----------------------------------------------------------------------------


@dataclass
class DeepCompressionResult:
    model: nn.Module
    path: Path
    account: dict[str, Any]
    sparsity: float
    history: list[dict[str, Any]] = field(default_factory=list)
    # modules left as they are (skip_unsupported), stored dense, and why
    dense: dict[str, str] = field(default_factory=dict)


def deep_compression(
    model: nn.Module,
    train_loader: torch.utils.data.DataLoader,
    val_loader: torch.utils.data.DataLoader | None,
    path: str | Path,
    cfg: DeepCompressionConfig | None = None,
    meta: dict[str, Any] | None = None,
    make_step: Callable[[FineTune], Any] | None = None,
) -> DeepCompressionResult:
    """Prune, fold BN, share weights and write the compressed file to ``path`` (``.dc``).

    ``make_step(finetune_config)`` (e.g. a factory of ``robust.training.AdversarialStep``)
    builds the Trainer step of each fine-tuning in place of plain classification.

    ``model`` is not changed: every stage runs on a deep copy. ``result.model`` is the model
    decoded from the written file by ``load_compressed`` (BN folded when ``cfg.fold_bn``, eval
    mode), so it is exactly what a later load of the file gives.
    """
    from dlforge.models.convert import unpack_attention
    from dlforge.train import Trainer

    cfg = cfg or DeepCompressionConfig()
    work = copy.deepcopy(model)
    # torch attention's packed in_proj_weight becomes q/k/v layers that share weights too.
    left = unpack_attention(work, "Deep Compression", cfg.skip_unsupported).left
    dense = {name: f"left as it is: {why}" for name, why in left.items()}
    # One global ranking: with BN still in place the layers' weights share a scale, and small
    # layers (the first conv) keep more of their weights than a uniform per-layer rate allows.
    pruner = GradualPruner.for_epochs(cfg.sparsity, cfg.finetune.epochs, cfg.prune_share)

    def stepped(ft: FineTune) -> dict[str, Any]:
        return {"step": make_step(ft)} if make_step is not None else {}

    ft = cfg.finetune
    history = Trainer(work, ft.train_config(), callbacks=[pruner], **stepped(ft)).fit(
        train_loader, val_loader
    )
    work.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    make_permanent(work)
    achieved = sparsity(work)["global"]
    if cfg.fold_bn:  # after pruning (BN helps fine-tuning), before sharing (zeros stay zeros)
        work = fold_batch_norm(work)[0]
    # A module left as it is (skip_unsupported) may read its layers' weights itself: those
    # layers keep plain (pruned) weights, stored dense.
    shareable = [*(n for n, m in work.named_modules() if isinstance(m, SHAREABLE)),
                 *recurrent_matrices(work)]  # fmt: skip
    inside_left = tuple(f"{name}." for name in left)
    share_weights(work, CodebookConfig(bits=cfg.weight_bits, keep_zeros=True,
                                       layers=[n for n in shareable
                                               if not n.startswith(inside_left)]))  # fmt: skip
    if cfg.codebook.epochs > 0:
        ft = cfg.codebook
        Trainer(work, ft.train_config(), **stepped(ft)).fit(train_loader, val_loader)
    work.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    written = save_compressed(work.eval(), path, cfg, meta or {})
    # The baked copy only lends its architecture: the weights returned are the file's.
    decoded = load_compressed(written, bake(work))
    return DeepCompressionResult(
        decoded,
        written,
        storage_account(written),
        achieved,
        [
            {"epoch": e["epoch"], **{k: v for k, v in e.items() if k != "epoch"}}
            for e in history.epochs
        ],
        dense,
    )
