"""Deep Compression end to end: prune, share, Huffman-code, write, load back to the same model;
the file's bytes accounted for exactly, and a bad file always a CheckpointError naming it."""

from __future__ import annotations

import copy
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from dlforge.compress.deep_compression import (
    DeepCompressionConfig,
    DeepCompressionResult,
    decode_layer,
    deep_compression,
    encode_layer,
    load_compressed,
    save_compressed,
    storage_account,
)
from dlforge.compress.prune import MagnitudePrune, magnitude_prune, make_permanent
from dlforge.compress.quantize.codebook import (
    CodebookConfig,
    SharedWeightLayer,
    bake,
    share_weights,
)
from dlforge.compress.quantize.fold import fold_batch_norm
from dlforge.models import create_model
from dlforge.train import FineTune
from dlforge.train.checkpoint import CheckpointError


def test_sparse_encoding_round_trips_long_gaps() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(300, 4)
    with torch.no_grad():
        layer.weight[torch.rand_like(layer.weight) < 0.97] = 0  # gaps far beyond 2^5
    shared = SharedWeightLayer(layer, bits=3, keep_zeros=True)
    streams = encode_layer(shared, index_bits=5)
    assert streams.codes.n_symbols > int((layer.weight != 0).sum())  # fillers were needed
    torch.testing.assert_close(decode_layer(streams), shared.weight().detach())


# --- the pipeline on the digits CNN, run once for the tests below --------------------------


def _digits_cnn(digits: Any, channels: list[int] | None = None) -> nn.Module:
    return create_model(
        "cnn", digits.input_shape, digits.num_classes, channels=channels or [16, 32]
    )


@pytest.fixture(scope="module")
def pipeline(
    digits: Any, small_cnn: nn.Module, tmp_path_factory: pytest.TempPathFactory
) -> tuple[nn.Module, dict[str, torch.Tensor], DeepCompressionResult]:
    torch.manual_seed(0)
    model = copy.deepcopy(small_cnn)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = DeepCompressionConfig(
        sparsity=0.8,
        finetune=FineTune(epochs=8, lr=3e-3),
        weight_bits=4,
        codebook=FineTune(epochs=2, lr=1e-4, schedule="constant"),
    )
    result = deep_compression(
        model,
        digits.loader("train", 64, True, torch.Generator().manual_seed(0)),
        None,
        tmp_path_factory.mktemp("dc") / "model.dc",
        cfg,
    )
    return model, before, result


def _accuracy(m: nn.Module, digits: Any) -> float:
    x, y = digits.test
    with torch.no_grad():
        return (m.eval()(x).argmax(1) == y).float().mean().item()


def test_pipeline_keeps_accuracy_and_returns_the_files_model(digits: Any, pipeline: Any) -> None:
    model, _, result = pipeline
    assert result.sparsity == pytest.approx(0.8, abs=0.01)
    compressed_acc = _accuracy(result.model, digits)
    assert compressed_acc > _accuracy(model, digits) - 0.05
    fresh = load_compressed(result.path, _digits_cnn(digits))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fresh.modules())  # folded first
    assert _accuracy(fresh, digits) == pytest.approx(compressed_acc)
    loaded = fresh.state_dict()
    assert loaded.keys() == result.model.state_dict().keys()
    for key, value in result.model.state_dict().items():
        assert torch.equal(value, loaded[key]), key


def test_pipeline_leaves_the_input_model_alone(pipeline: Any) -> None:
    model, before, _ = pipeline
    after = model.state_dict()
    assert after.keys() == before.keys()  # no pruning parametrization, no folding
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert not any(isinstance(m, SharedWeightLayer) for m in model.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not model.training


def test_account_sums_to_the_file_and_stays_near_the_theoretical_size(pipeline: Any) -> None:
    result = pipeline[2]
    account = storage_account(result.path)
    assert account == result.account
    rows = account["layers"]
    parts = ("code_bytes", "index_bytes", "codebook_bytes", "table_bytes", "overhead_bytes")
    assert all(r["file_bytes"] == sum(r[p] for p in parts) for r in rows)
    total = account["header_bytes"] + account["dense_bytes"] + account["dense_overhead_bytes"]
    assert total + sum(r["file_bytes"] for r in rows) == result.path.stat().st_size
    assert account["file_bytes"] == result.path.stat().st_size
    # Measured: 1,470 file bytes against a 1,446-byte account (1.02x); the JSON header and the
    # names cost more than the compact code tables save.
    assert account["file_bytes"] <= 1.05 * account["account_bytes"]
    assert account["ratio"] == account["file_ratio"] > 8  # 20% of weights, 4-bit codes
    assert account["account_ratio"] == account["fp32_bytes"] / account["account_bytes"]
    for row in rows:
        assert row["table_bytes"] < row["account_bytes"] - row["code_bytes"] - row["index_bytes"]
        assert row["code_bytes"] + row["index_bytes"] <= row["before_huffman_bytes"]


def test_loading_into_another_model_names_the_file(digits: Any, pipeline: Any) -> None:
    path = pipeline[2].path
    mlp = create_model("mlp", digits.input_shape, digits.num_classes)
    with pytest.raises(CheckpointError, match="does not fit the model") as err:
        load_compressed(path, mlp)
    assert str(path) in str(err.value)
    with pytest.raises(CheckpointError, match="has shape") as err:
        load_compressed(path, _digits_cnn(digits, [8, 16]))
    assert str(path) in str(err.value)


# --- save/load directly, and malformed files -------------------------------------------------


def _shared_cnn(fold: bool) -> tuple[nn.Module, nn.Module]:
    """(a pruned, weight-shared small CNN, a model of the same architecture)."""
    torch.manual_seed(0)
    model = create_model("cnn", (1, 8, 8), 10, channels=[4, 8])
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # stored stats, distinct from a fresh model's
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.num_batches_tracked.fill_(7)
    magnitude_prune(model, MagnitudePrune(amount=0.7))
    make_permanent(model)
    work = fold_batch_norm(model)[0] if fold else model.eval()
    share_weights(work, CodebookConfig(bits=3, keep_zeros=True))
    return work, create_model("cnn", (1, 8, 8), 10, channels=[4, 8])


@pytest.mark.parametrize("fold", [True, False])
def test_round_trip_is_exact(fold: bool, tmp_path: Path) -> None:
    shared, arch = _shared_cnn(fold)
    path = save_compressed(shared, tmp_path / "m.dc", DeepCompressionConfig(), {"run": "x"})
    arch_before = {k: v.clone() for k, v in arch.state_dict().items()}
    loaded = load_compressed(path, arch).state_dict()
    assert all(torch.equal(arch.state_dict()[k], v) for k, v in arch_before.items())
    expected = bake(copy.deepcopy(shared)).state_dict()
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key
    assert any("num_batches_tracked" in k for k in loaded) != fold  # int64 buffers kept
    account = storage_account(path)
    assert account["file_bytes"] == path.stat().st_size
    assert account["fp32_bytes"] == 4 * sum(v.numel() for v in expected.values())


_CFG = DeepCompressionConfig()


@pytest.fixture(scope="module")
def good_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, nn.Module, bytes]:
    """(a valid file's bytes, its architecture, the packed cluster codes of its first layer)."""
    shared, arch = _shared_cnn(fold=True)
    path = save_compressed(shared, tmp_path_factory.mktemp("good") / "m.dc", _CFG, {})
    first = next(m for m in shared.modules() if isinstance(m, SharedWeightLayer))
    return path.read_bytes(), arch, encode_layer(first, _CFG.index_bits_conv).codes.data


def _reseal(body: bytes) -> bytes:
    """A new valid checksum, so the damage reaches the parser behind it."""
    return body + struct.pack("<I", zlib.crc32(body))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


_CASES: dict[str, Callable[[bytes, bytes], bytes]] = {
    "empty": lambda good, codes: b"",
    "text": lambda good, codes: b"weights: [1, 2, 3]\n",
    "wrong magic": lambda good, codes: b"DLDX" + good[4:],
    "wrong version": lambda good, codes: _reseal(good[:4] + b"\x09" + good[5:-4]),
    "truncated in the magic": lambda good, codes: good[:3],
    "truncated after the version": lambda good, codes: good[:5],
    "truncated in the middle": lambda good, codes: good[: len(good) // 2],
    "truncated by one byte": lambda good, codes: good[:-1],
    "flipped Huffman byte": lambda good, codes: _flip(good, good.index(codes)),
    "flipped header length": lambda good, codes: _reseal(_flip(good, 5)[:-4]),
    "truncated body, resealed": lambda good, codes: _reseal(good[: len(good) // 2]),
    "trailing bytes, resealed": lambda good, codes: _reseal(good[:-4] + b"\x00"),
    "safetensors file": lambda good, codes: struct.pack("<Q", 2) + b"{}",
}


@pytest.mark.parametrize("case", list(_CASES))
def test_a_malformed_file_is_a_checkpoint_error_naming_it(
    case: str, good_file: Any, tmp_path: Path
) -> None:
    good, arch, codes = good_file
    path = tmp_path / "bad.dc"
    path.write_bytes(_CASES[case](good, codes))
    for read in (lambda: load_compressed(path, arch), lambda: storage_account(path)):
        with pytest.raises(CheckpointError) as err:
            read()
        assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_missing_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="could not be read"):
        storage_account(tmp_path / "none.dc")


def test_any_damage_behind_a_valid_checksum_fails_cleanly(good_file: Any, tmp_path: Path) -> None:
    """Truncate at every offset, and flip every byte, then reseal the checksum: the parser
    alone must turn each into a CheckpointError (or, for a flip it cannot see, such as one in
    the codebook, a load), never another exception."""
    good, arch, _ = good_file
    body, path = good[:-4], tmp_path / "bad.dc"
    loads = 0
    for at in range(len(body)):
        path.write_bytes(_reseal(body[:at]))
        with pytest.raises(CheckpointError):
            storage_account(path)
        path.write_bytes(_reseal(_flip(body, at)))
        try:
            load_compressed(path, arch)
            loads += 1
        except CheckpointError as exc:
            assert str(path) in str(exc)
    # Only the values themselves can change unseen (the checksum is what guards them): on
    # this 430-byte file 208 of the 255 flips in codebooks, code bits and dense data load.
    account = storage_account(_write(path, good))
    payload = account["dense_bytes"] + sum(
        r["codebook_bytes"] + r["code_bytes"] + r["index_bytes"] for r in account["layers"]
    )
    assert loads <= payload
