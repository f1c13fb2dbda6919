"""Ensembles: voting as specified, one ONNX graph that ONNX Runtime runs the same, snapshots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dlforge.evaluate.ensemble import Ensemble, Snapshots, bootstrap_sampler


def members(n: int = 3) -> list[nn.Module]:
    out = []
    for i in range(n):
        torch.manual_seed(i)
        out.append(nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4)).eval())
    return out


def test_soft_and_hard_voting() -> None:
    ms, x = members(), torch.randn(32, 6)
    with torch.no_grad():
        probs = torch.stack([torch.softmax(m(x), 1) for m in ms])
        soft = torch.softmax(Ensemble(ms, "soft")(x), 1)
        hard = torch.softmax(Ensemble(ms, "hard")(x), 1)
    torch.testing.assert_close(soft, probs.mean(0), atol=1e-6, rtol=0)
    votes = torch.nn.functional.one_hot(probs.argmax(2), 4).float().mean(0)
    torch.testing.assert_close(hard, votes, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="at least one member"):
        Ensemble([])


def test_an_ensemble_exports_to_one_onnx_graph(tmp_path: Path) -> None:
    from dlforge.deploy import OrtModel, export_onnx

    ens, x = Ensemble(members()).eval(), torch.randn(16, 6)
    path = export_onnx(ens, x[:1], tmp_path / "ensemble.onnx")
    with torch.no_grad():
        expected = ens(x).numpy()
    np.testing.assert_allclose(OrtModel(path).predict(x.numpy()), expected, atol=1e-5)


def test_snapshots_and_bootstrap(digits) -> None:
    from dlforge.models import create_model
    from dlforge.train import OptimizerConfig, ScheduleConfig, TrainConfig, Trainer

    model = create_model("mlp", digits.input_shape, digits.num_classes, hidden=[16])
    snaps = Snapshots(cycles=3, epochs=6)
    cfg = TrainConfig(epochs=6, progress=False, optimizer=OptimizerConfig(lr=1e-2),
                      schedule=ScheduleConfig(name="cyclic_cosine", cycles=3))  # fmt: skip
    history = Trainer(model, cfg, callbacks=[snaps]).fit(digits.loader("train", 64, True))
    assert len(snaps.states) == 3
    lrs = history.steps["lr"]
    per_cycle = len(lrs) // 3
    assert lrs[0] == lrs[per_cycle] == pytest.approx(1e-2)  # the rate restarts each cycle
    assert lrs[per_cycle - 1] < 1e-3
    snapshot_models = snaps.models(model)
    assert not torch.equal(snapshot_models[0][1].weight, snapshot_models[2][1].weight)
    with pytest.raises(ValueError, match="equal cycles"):
        Snapshots(cycles=4, epochs=6)
    n = len(digits.train[1])
    indices = list(bootstrap_sampler(n, seed=0))
    assert len(indices) == n  # as many draws as samples ...
    # ... with replacement: about 1 - 1/e of the samples appear (63.2%)
    assert abs(len(set(indices)) / n - (1 - 1 / np.e)) < 0.03
    assert indices == list(bootstrap_sampler(n, seed=0)) != list(bootstrap_sampler(n, seed=1))


def test_an_ensemble_stage_in_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from dlforge.cli import main

    root = Path(__file__).resolve().parents[1]
    sets = [f"output_dir={tmp_path}", "train.epochs=2", "ensemble.enabled=true",
            "ensemble.members=2", "ensemble.kind=bagging", "ensemble.bench=true"]  # fmt: skip
    assert main(["-q", "run", str(root / "recipes/default.yaml"),
                 *[a for s in sets for a in ("--set", s)]]) == 0  # fmt: skip
    ens = json.loads((tmp_path / "default/metrics.json").read_text())["ensemble"]
    variants = [r["variant"] for r in ens["rows"]]
    assert variants == ["single model", "member 1", "member 2", "ensemble (bagging, soft voting)"]
    assert [r["variant"] for r in ens["speed"]] == ["single model", "ensemble"]
    assert ens["speed"][1]["file_bytes"] > ens["speed"][0]["file_bytes"]  # two members inside
    html = (tmp_path / "default/report.html").read_text()
    assert "Ensemble: bagging, soft voting" in html and "ECE" in html
    assert "ensemble (bagging" in capsys.readouterr().out


class GruAttention(nn.Module):  # torch's own recurrent and attention layers, on (N, C, L)
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(4, 16, batch_first=True)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(x.transpose(1, 2))
        a, _ = self.attn(h, h, h)
        return self.head(a.mean(1))


class Transformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 1)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(self.proj(x.transpose(1, 2))).mean(1))


def test_models_we_did_not_write_train_augmented_and_ensemble_into_onnx(tmp_path: Path) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from dlforge.data.augment import BatchAugment
    from dlforge.data.config import AugmentConfig, MixConfig, SignalAugmentConfig
    from dlforge.deploy import OrtModel, export_onnx
    from dlforge.train import ClassificationStep, TrainConfig, Trainer

    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 4, 20, generator=g)
    y = (x.mean((1, 2)) > 0).long() + (x[:, 0, 0] > 1).long()
    signal = SignalAugmentConfig(shift=2, noise=0.05, time_warp=0.1)
    aug = BatchAugment(AugmentConfig(signal=signal, mix=MixConfig(mixup_alpha=0.2)), 3)
    members = []
    for make in (GruAttention, Transformer):
        torch.manual_seed(0)
        model = make()
        before = [p.detach().clone() for p in model.parameters()]
        loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
        Trainer(model, TrainConfig(epochs=2, progress=False),
                step=ClassificationStep(augment=aug)).fit(loader)  # fmt: skip
        assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
        members.append(model.eval())
    ens = Ensemble(members).eval()
    path = export_onnx(ens, x[:1], tmp_path / "ensemble.onnx")
    with torch.no_grad():
        expected = ens(x).numpy()
    np.testing.assert_allclose(OrtModel(path).predict(x.numpy()), expected, atol=1e-5)
