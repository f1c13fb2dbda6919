"""Deep Compression end to end: prune, share, Huffman-code, write, load back to the same model."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from dlforge.compress.deep_compression import (
    DeepCompressionConfig,
    decode_layer,
    deep_compression,
    encode_layer,
    load_compressed,
    storage_account,
)
from dlforge.compress.quantize.codebook import SharedWeightLayer
from dlforge.models import create_model


def test_sparse_encoding_round_trips_long_gaps() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(300, 4)
    with torch.no_grad():
        layer.weight[torch.rand_like(layer.weight) < 0.97] = 0  # gaps far beyond 2^5
    shared = SharedWeightLayer(layer, bits=3, keep_zeros=True)
    streams = encode_layer(shared, index_bits=5)
    assert streams.codes.n_symbols > int((layer.weight != 0).sum())  # fillers were needed
    torch.testing.assert_close(decode_layer(streams), shared.weight().detach())


def test_pipeline_writes_a_file_that_loads_to_the_same_accuracy(
    digits, small_cnn, tmp_path: Path
) -> None:
    model = copy.deepcopy(small_cnn)
    x, y = digits.test

    def accuracy(m: nn.Module) -> float:
        with torch.no_grad():
            return (m.eval()(x).argmax(1) == y).float().mean().item()

    base = accuracy(model)
    cfg = DeepCompressionConfig(
        sparsity=0.8, prune_epochs=8, weight_bits=4, codebook_epochs=2, lr=3e-3
    )
    result = deep_compression(
        model,
        digits.loader("train", 64, True, torch.Generator().manual_seed(0)),
        None,
        tmp_path / "model.dc.safetensors",
        cfg,
    )
    assert result.sparsity == pytest.approx(0.8, abs=0.01)
    compressed_acc = accuracy(result.model)
    assert compressed_acc > base - 0.05
    fresh = load_compressed(
        result.path, create_model("cnn", digits.input_shape, digits.num_classes, channels=[16, 32])
    )
    assert not any(
        isinstance(m, nn.BatchNorm2d) for m in fresh.modules()
    )  # folded before compressing
    assert accuracy(fresh) == pytest.approx(compressed_acc)
    loaded = fresh.state_dict()
    for key, value in result.model.state_dict().items():
        assert torch.equal(value.float(), loaded[key].float()), key
    account = storage_account(result.path)
    assert account["ratio"] > 8  # 10% of weights, 4-bit codes, small gaps, plus dense BN/bias
    assert account["compressed_bytes"] <= account["file_bytes"]
    for row in account["layers"]:
        assert row["compressed_bytes"] <= row["before_huffman_bytes"] + row["table_bytes"]
    with pytest.raises(ValueError, match="does not fit the model"):
        load_compressed(result.path, create_model("mlp", digits.input_shape, digits.num_classes))
