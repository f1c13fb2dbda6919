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
