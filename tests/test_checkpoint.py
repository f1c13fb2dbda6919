from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from dlforge.models import create_model
from dlforge.train import (
    CheckpointError,
    atomic_write,
    load_train_state,
    load_weights,
    read_meta,
    save_checkpoint,
    save_train_state,
)


def test_round_trip_with_metadata(tmp_path: Path) -> None:
    model = create_model("resnet20", (3, 16, 16), 10)
    meta = {"model": {"name": "resnet20"}, "epoch": 3, "nested": {"a": [1, 2.5, None]}}
    path = save_checkpoint(tmp_path / "best.safetensors", model, meta)
    assert read_meta(path) == meta
    assert json.loads(path.with_suffix(".json").read_text()) == meta  # human-readable twin
    fresh = create_model("resnet20", (3, 16, 16), 10)
    load_weights(path, fresh)
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    assert path.read_bytes()[:8] != b"\x80\x02\x8a\x0a" + b"\x6c\xfc\x9c\x46"  # not a torch pickle


def test_tied_weights_are_saved(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 5, bias=False))
    model[1].weight = model[0].weight
    path = save_checkpoint(tmp_path / "tied.safetensors", model, {})
    load_weights(path, model)


def test_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        read_meta(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_meta(junk)
    path = save_checkpoint(tmp_path / "m.safetensors", create_model("cnn", (1, 8, 8), 10), {})
    with pytest.raises(
        CheckpointError,
        match=r"tensor '0.weight' has shape \(32, 1, 3, 3\).*expects \(8, 1, 3, 3\)",
    ):
        load_weights(path, create_model("cnn", (1, 8, 8), 10, channels=[8, 64]))
    with pytest.raises(CheckpointError, match="missing"):
        load_weights(path, create_model("mlp", (1, 8, 8), 10))


def test_non_finite_weights_are_refused(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="non-finite weights .*'weight'"):
        save_checkpoint(tmp_path / "x.safetensors", model, {})
    assert not any(tmp_path.iterdir())


def test_atomic_write_keeps_the_old_file_on_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, nn.Linear(3, 2), {"epoch": 1})
    before = path.read_bytes()

    def crash(tmp: str) -> None:
        Path(tmp).write_bytes(b"half a checkp")
        raise KeyboardInterrupt("power cut")

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.json", "last.safetensors"]


def test_train_state_round_trip(tmp_path: Path) -> None:
    model = nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    state = {
        "optimizer": opt.state_dict(),
        "rng": torch.get_rng_state(),
        "epoch": 2,
        "best": None,
        "inf": float("inf"),
    }
    path = save_train_state(tmp_path / "s.safetensors", state)
    back = load_train_state(path)
    assert back["epoch"] == 2 and back["best"] is None and back["inf"] == float("inf")
    assert torch.equal(back["rng"], state["rng"])
    opt2 = torch.optim.AdamW(nn.Linear(4, 2).parameters(), lr=0.1)
    opt2.load_state_dict(back["optimizer"])  # int parameter ids survive JSON
    for k, v in opt.state_dict()["state"][0].items():
        assert torch.equal(torch.as_tensor(v), torch.as_tensor(opt2.state_dict()["state"][0][k]))
