"""Deep Compression (Han et al., 2016): prune → fine-tune → k-means weight sharing → Huffman.

The compressed file is a safetensors container of byte streams, so nothing is unpickled:
for each conv/linear layer, the Huffman-coded cluster index of every surviving weight, the
Huffman-coded gap to the previous surviving weight (``index_bits`` wide; a longer gap is
bridged with filler entries, as in the paper), and the float32 codebook; every other tensor
(biases, batch norm) is stored densely in float32. ``storage_account`` says where the bytes go;
``load_compressed`` rebuilds the exact weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from dlforge.compress import huffman
from dlforge.compress.prune import GradualPruner, make_permanent, sparsity
from dlforge.compress.quantize.codebook import (
    CodebookConfig,
    SharedWeightLayer,
    bake,
    share_weights,
)
from dlforge.compress.quantize.fold import fold_batch_norm
from dlforge.train.checkpoint import atomic_write

FORMAT = "dlforge-deep-compression/1"


@dataclass
class DeepCompressionConfig:
    sparsity: float = 0.9
    prune_epochs: int = 20  # gradual (cubic) pruning while fine-tuning, cosine-decayed rate
    prune_share: float = 0.5  # share of prune_epochs raising sparsity; the rest recover
    weight_bits: int = 4  # 2^bits shared weights per layer
    codebook_epochs: int = 2  # centroid fine-tuning
    lr: float = 1e-3  # while pruning
    codebook_lr: float = 1e-4  # while fine-tuning the centroids (BN is folded by then)
    label_smoothing: float = 0.0  # while pruning and fine-tuning the centroids
    index_bits_conv: int = 8  # the paper's choice: 8 bits for conv, 5 for fully connected
    index_bits_linear: int = 5
    # Fold batch norm into the convs first: the deployed model has no BN, so its four vectors
    # per channel need not be stored (they were half of a small CNN's compressed file).
    fold_bn: bool = True


@dataclass
class LayerStreams:
    shape: list[int]
    codebook: np.ndarray
    codes: huffman.Encoded
    gaps: huffman.Encoded
    index_bits: int
    weight_bits: int


def encode_layer(layer: SharedWeightLayer, index_bits: int) -> LayerStreams:
    """Relative-index sparse encoding of the surviving weights, then Huffman on both streams."""
    codes = layer.codes.flatten().long().numpy()
    if layer.mask is not None:
        positions = np.flatnonzero(layer.mask.flatten().numpy())
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
        codebook=layer.centroids.detach().float().numpy(),
        codes=huffman.encode(np.asarray(code_out, dtype=np.int64)),
        gaps=huffman.encode(np.asarray(gap_out, dtype=np.int64)),
        index_bits=index_bits,
        weight_bits=layer.bits,
    )


def decode_layer(streams: LayerStreams) -> torch.Tensor:
    codes = huffman.decode(streams.codes)
    gaps = huffman.decode(streams.gaps)
    filler = 2**streams.weight_bits
    flat = np.zeros(int(np.prod(streams.shape)), dtype=np.float32)
    pos = -1
    for gap, code in zip(gaps.tolist(), codes.tolist()):
        pos += gap + 1
        if code != filler:
            flat[pos] = streams.codebook[code]
    return torch.from_numpy(flat.reshape(streams.shape))


def _encoded_meta(e: huffman.Encoded) -> dict[str, Any]:
    return {
        "n_bits": e.n_bits,
        "n_symbols": e.n_symbols,
        "lengths": {str(k): v for k, v in e.lengths.items()},
    }


def _encoded_from(meta: dict[str, Any], data: bytes) -> huffman.Encoded:
    lengths = {int(k): int(v) for k, v in meta["lengths"].items()}
    return huffman.Encoded(data, int(meta["n_bits"]), int(meta["n_symbols"]), lengths)


def _as_bytes_tensor(data: bytes) -> torch.Tensor:
    return (
        torch.frombuffer(bytearray(data), dtype=torch.uint8)
        if data
        else torch.zeros(0, dtype=torch.uint8)
    )


def save_compressed(
    model: nn.Module, path: str | Path, cfg: DeepCompressionConfig, meta: dict[str, Any]
) -> Path:
    """Write a model whose conv/linear layers are ``SharedWeightLayer``s (masked)."""
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, Any] = {}
    shared_names = set()
    for name, m in model.named_modules():
        if not isinstance(m, SharedWeightLayer):
            continue
        bits = cfg.index_bits_linear if isinstance(m.layer, nn.Linear) else cfg.index_bits_conv
        s = encode_layer(m, bits)
        tensors[f"{name}.codes"] = _as_bytes_tensor(s.codes.data)
        tensors[f"{name}.gaps"] = _as_bytes_tensor(s.gaps.data)
        tensors[f"{name}.codebook"] = torch.from_numpy(s.codebook.copy())
        layers[name] = {
            "shape": s.shape,
            "codes": _encoded_meta(s.codes),
            "gaps": _encoded_meta(s.gaps),
            "index_bits": s.index_bits,
            "weight_bits": s.weight_bits,
        }
        shared_names.add(f"{name}.layer.weight")
    prefixes = {n: f"{n}.layer." for n in layers}
    for key, value in model.state_dict().items():
        if key in shared_names or any(
            key in (f"{n}.codes", f"{n}.centroids", f"{n}.mask") for n in layers
        ):
            continue
        # the plain model's name: "<layer>.layer.bias" -> "<layer>.bias"
        plain = next(
            (f"{n}.{key[len(p) :]}" for n, p in prefixes.items() if key.startswith(p)), key
        )
        tensors[f"dense.{plain}"] = (
            value.detach().float().contiguous() if value.is_floating_point() else value
        )
    folded = isinstance(model, torch.fx.GraphModule)
    header = {
        "dlforge": json.dumps(
            {"format": FORMAT, "layers": layers, "meta": meta, "folded_bn": folded}
        )
    }
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def load_compressed(path: str | Path, model: nn.Module) -> nn.Module:
    """Decode the file into ``model``'s architecture (any weights); returns the loaded model,
    with batch norm folded when the file was written that way."""
    with safe_open(str(path), framework="pt") as fh:
        info = json.loads((fh.metadata() or {})["dlforge"])
        if info.get("format") != FORMAT:
            raise ValueError(f"{path} is not a {FORMAT} file")
        if info.get("folded_bn"):
            model = fold_batch_norm(model)[0]
        state: dict[str, torch.Tensor] = {}
        for name, layer in info["layers"].items():
            streams = LayerStreams(
                shape=layer["shape"],
                codebook=fh.get_tensor(f"{name}.codebook").numpy(),
                codes=_encoded_from(
                    layer["codes"], fh.get_tensor(f"{name}.codes").numpy().tobytes()
                ),
                gaps=_encoded_from(layer["gaps"], fh.get_tensor(f"{name}.gaps").numpy().tobytes()),
                index_bits=layer["index_bits"],
                weight_bits=layer["weight_bits"],
            )
            state[f"{name}.weight"] = decode_layer(streams)
        for key in fh.keys():  # noqa: SIM118  (a safetensors handle, not a dict)
            if key.startswith("dense."):
                state[key[len("dense.") :]] = fh.get_tensor(key)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise ValueError(f"{path} does not fit the model: missing {missing[:5]}")
    model.load_state_dict({k: state[k].to(own[k].dtype) for k in own})
    return model


def storage_account(path: str | Path) -> dict[str, Any]:
    """Where the compressed file's bytes go, against fp32 storage of the same parameters."""
    with safe_open(str(path), framework="pt") as fh:
        info = json.loads((fh.metadata() or {})["dlforge"])
        rows, dense_bytes = [], 0
        total_params = 0
        for name, layer in info["layers"].items():
            n = int(np.prod(layer["shape"]))
            total_params += n
            codes = (layer["codes"]["n_bits"] + 7) // 8
            gaps = (layer["gaps"]["n_bits"] + 7) // 8
            tables = 2 * (len(layer["codes"]["lengths"]) + len(layer["gaps"]["lengths"]))
            book = 4 * 2 ** layer["weight_bits"]
            entries = layer["codes"]["n_symbols"]
            raw_bits = entries * (layer["weight_bits"] + 1 + layer["index_bits"])
            rows.append(
                {
                    "layer": name,
                    "params": n,
                    "entries": entries,
                    "code_bytes": codes,
                    "index_bytes": gaps,
                    "codebook_bytes": book,
                    "table_bytes": tables,
                    "before_huffman_bytes": (raw_bits + 7) // 8 + book,
                    "compressed_bytes": codes + gaps + book + tables,
                    "ratio": 4 * n / (codes + gaps + book + tables),
                }
            )
        for key in fh.keys():  # noqa: SIM118  (a safetensors handle, not a dict)
            if key.startswith("dense."):
                t = fh.get_tensor(key)
                dense_bytes += t.numel() * t.element_size()
                total_params += t.numel()
    compressed = sum(r["compressed_bytes"] for r in rows) + dense_bytes
    return {
        "layers": rows,
        "dense_bytes": dense_bytes,
        "compressed_bytes": compressed,
        "fp32_bytes": 4 * total_params,
        "ratio": 4 * total_params / compressed,
        "file_bytes": Path(path).stat().st_size,
    }


@dataclass
class DeepCompressionResult:
    model: nn.Module
    path: Path
    account: dict[str, Any]
    sparsity: float
    history: list[dict[str, Any]] = field(default_factory=list)


def deep_compression(
    model: nn.Module,
    train_loader: torch.utils.data.DataLoader,
    val_loader: torch.utils.data.DataLoader | None,
    path: str | Path,
    cfg: DeepCompressionConfig | None = None,
    meta: dict[str, Any] | None = None,
) -> DeepCompressionResult:
    """Run the three stages on ``model`` (changed in place) and write the compressed file."""
    from dlforge.train import OptimizerConfig, ScheduleConfig, TrainConfig, Trainer

    cfg = cfg or DeepCompressionConfig()
    train = TrainConfig(
        epochs=cfg.prune_epochs,
        progress=False,
        optimizer=OptimizerConfig(name="adamw", lr=cfg.lr),
        schedule=ScheduleConfig(name="cosine"),
        label_smoothing=cfg.label_smoothing,
        restore_best=False,
    )
    # One global ranking: with BN still in place the layers' weights share a scale, and small
    # layers (the first conv) keep more of their weights than a uniform per-layer rate allows.
    pruner = GradualPruner.for_epochs(cfg.sparsity, cfg.prune_epochs, cfg.prune_share)
    history = Trainer(model, train, on_train_epoch_start=pruner).fit(train_loader, val_loader)
    model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    make_permanent(model)
    achieved = sparsity(model)["global"]
    if cfg.fold_bn:  # after pruning (BN helps fine-tuning), before sharing (zeros stay zeros)
        model = fold_batch_norm(model)[0]
    share_weights(model, CodebookConfig(bits=cfg.weight_bits, keep_zeros=True))
    if cfg.codebook_epochs > 0:
        tune = TrainConfig(
            epochs=cfg.codebook_epochs,
            progress=False,
            restore_best=False,
            optimizer=OptimizerConfig(name="adamw", lr=cfg.codebook_lr),
            label_smoothing=cfg.label_smoothing,
        )
        Trainer(model, tune).fit(train_loader, val_loader)
    model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    written = save_compressed(model.eval(), path, cfg, meta or {})
    bake(model)
    return DeepCompressionResult(
        model,
        written,
        storage_account(written),
        achieved,
        [
            {"epoch": e["epoch"], **{k: v for k, v in e.items() if k != "epoch"}}
            for e in history.epochs
        ],
    )
