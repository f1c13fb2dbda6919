"""Imbalance from recipes and Python: SMOTE against imbalanced-learn, decoupled head
re-training, decision thresholds and logit adjustment, EasyEnsemble, and the metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from imblearn.metrics import geometric_mean_score
from imblearn.over_sampling import SMOTE
from sklearn.metrics import f1_score, recall_score

from dlforge.config import ConfigError
from dlforge.data import DataConfig, DataError, load_data
from dlforge.data.imbalance import long_tail_indices
from dlforge.data.smote import smote_features
from dlforge.deploy import Session
from dlforge.evaluate.imbalance import geometric_mean, groups, imbalance_report
from dlforge.models import create_model
from dlforge.pipeline import prepare, run
from dlforge.recipe import load_recipe
from dlforge.train import OptimizerConfig, TrainConfig, Trainer
from dlforge.train.decision import choose_threshold, fold_logit_adjustment
from dlforge.train.decoupled import classifier_head, retrain_head
from dlforge.train.losses import adjust_logits

ROOT = Path(__file__).resolve().parents[1]


def test_smote_is_imbalanced_learns() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(230, 4))
    y = np.repeat([0, 1, 2], [200, 20, 10])
    xs, ys = smote_features(x, y, "smote", seed=3, k_neighbors=3)
    xr, yr = SMOTE(random_state=3, k_neighbors=3).fit_resample(x, y)
    np.testing.assert_array_equal(xs, xr)
    np.testing.assert_array_equal(ys, yr)
    assert np.bincount(ys).tolist() == [200, 200, 200]
    with pytest.raises(ConfigError, match="class 2 has 10 training samples"):
        smote_features(x, y, k_neighbors=10)
    with pytest.raises(ConfigError, match=r"inputs of shape \(1, 8, 8\) are not"):
        smote_features(np.zeros((10, 1, 8, 8)), np.arange(10) % 2)


def test_smote_from_a_recipe_touches_the_training_split_only() -> None:
    cfg = DataConfig(source="synthetic")
    cfg.synthetic.weights = [0.9, 0.07, 0.03]
    plain = load_data(cfg, seed=0)
    cfg.imbalance.smote = "borderline"
    data = load_data(cfg, seed=0)
    counts = np.bincount(data.train[1].numpy())
    assert len(set(counts.tolist())) == 1 and counts[0] == np.bincount(plain.train[1].numpy())[0]
    assert torch.equal(data.test[0], plain.test[0]) and torch.equal(data.val[1], plain.val[1])
    assert data.summary()["smote"]["counts_after"] == counts.tolist()
    with pytest.raises(DataError, match="use train.decoupled"):
        load_data(DataConfig(source="digits", imbalance={"smote": "smote"}), seed=0)  # type: ignore[arg-type]


def test_metrics_against_imbalanced_learn_and_scikit_learn() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 300)
    p = np.where(rng.random(300) < 0.7, y, rng.integers(0, 4, 300))
    assert geometric_mean(y, p, 4) == pytest.approx(geometric_mean_score(y, p))
    recall = recall_score(y, p, average=None)
    report = imbalance_report(recall, np.bincount(y), [500, 100, 50, 5])
    assert report["geometric_mean"] == pytest.approx(geometric_mean_score(y, p))
    assert report["groups"] == {"head": [0, 1], "medium": [2], "tail": [3]}
    assert report["tail_recall"] == pytest.approx(recall[3])
    assert report["head_recall"] == pytest.approx(recall[:2].mean())
    assert groups([5, 50, 500]) == {"head": [2], "medium": [1], "tail": [0]}


@pytest.fixture(scope="module")
def long_tailed_cnn(digits):  # type: ignore[no-untyped-def]
    """A digits CNN trained on a ρ = 50 long-tailed training split."""
    x, y = digits.train
    idx = long_tail_indices(y.numpy(), 50, seed=0)
    xt, yt = x[idx], y[idx]
    torch.manual_seed(0)
    model = create_model("cnn", digits.input_shape, 10, channels=[16, 32])
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(xt, yt), batch_size=64, shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    Trainer(model, TrainConfig(epochs=12, progress=False,
                               optimizer=OptimizerConfig(lr=3e-3))).fit(loader)  # fmt: skip
    return model.eval(), xt, yt


def balanced_accuracy(model: torch.nn.Module, digits) -> float:  # type: ignore[no-untyped-def]
    from sklearn.metrics import balanced_accuracy_score

    x, y = digits.test
    with torch.no_grad():
        return float(balanced_accuracy_score(y, model(x).argmax(1)))


def test_decoupled_head_retraining_lifts_the_tail(long_tailed_cnn, digits) -> None:  # type: ignore[no-untyped-def]
    import copy

    model, xt, yt = long_tailed_cnn
    before = balanced_accuracy(model, digits)
    smote = copy.deepcopy(model)
    backbone = {k: v.clone() for k, v in smote.state_dict().items() if not k.startswith("9.")}
    info = retrain_head(smote, xt, yt, 10, method="smote", k_neighbors=1)
    assert info["counts_after"] == [int(np.bincount(yt.numpy()).max())] * 10
    after = balanced_accuracy(smote, digits)
    assert after > before + 0.1  # Kang et al.: the classifier, not the features, is biased
    name, _ = classifier_head(smote, 10)
    for k, v in smote.state_dict().items():  # the backbone is untouched
        if not k.startswith(name + "."):
            assert torch.equal(v, backbone[k])
    with pytest.raises(ConfigError, match="no nn.Linear with 7 outputs"):
        retrain_head(copy.deepcopy(model), xt, yt, 7)


def test_logit_adjustment_folded_into_the_head_equals_post_hoc(long_tailed_cnn, digits) -> None:  # type: ignore[no-untyped-def]
    import copy

    model, _, yt = long_tailed_cnn
    counts = np.bincount(yt.numpy(), minlength=10)
    x = digits.test[0]
    with torch.no_grad():
        expected = adjust_logits(model(x), counts, tau=1.0)
        folded = copy.deepcopy(model)
        fold_logit_adjustment(folded, counts, tau=1.0)
        torch.testing.assert_close(folded(x), expected, rtol=1e-5, atol=1e-5)
    assert balanced_accuracy(folded, digits) > balanced_accuracy(model, digits)


def test_threshold_choice_is_the_best_on_the_curve() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.1).astype(int)
    p = np.clip(0.3 * y + rng.random(400) * 0.7, 0, 1)
    best = choose_threshold(y, p, "f1")
    grid = {t: f1_score(y, p >= t) for t in np.unique(p)}
    assert best["threshold"] == max(grid, key=grid.get)  # type: ignore[arg-type]
    at = choose_threshold(y, p, "recall", target_recall=0.8)
    assert recall_score(y, p >= at["threshold"]) >= 0.8
    assert (
        recall_score(y, p >= np.nextafter(at["threshold"], 2)) < 0.8 or at["threshold"] == p.max()
    )


def test_binary_threshold_travels_to_the_session(tmp_path: Path) -> None:
    recipe = load_recipe(
        ROOT / "recipes/default.yaml",
        [f"output_dir={tmp_path}", "data.source=synthetic", "data.synthetic.n_classes=2",
         "data.synthetic.weights=[0.93,0.07]", "data.synthetic.n_samples=1500", "model.name=mlp",
         "model.kwargs={}", "train.epochs=4", "train.decision.threshold=f1",
         "quantize.enabled=true", "report.enabled=false"],
    )  # fmt: skip
    outcome = run(recipe)
    decision = outcome.metrics["train"]["decision"]
    assert 0 < decision["threshold"] < 1 and decision["metric"] == "f1"
    at = outcome.metrics["evaluate"]["decision"]  # the test metrics at the threshold
    assert at["threshold"] == decision["threshold"] and 0 <= at["f1"] <= 1
    pre = json.loads((outcome.run_dir / "deploy" / "preprocessing.json").read_text())
    assert pre["decision"]["threshold"] == decision["threshold"]
    from dlforge.train.checkpoint import read_meta

    meta = read_meta(outcome.run_dir / "checkpoints" / "best.safetensors")
    assert meta["preprocessing"]["decision"]["threshold"] == decision["threshold"]
    session = Session.from_run(outcome.run_dir, "fp32", threads=1)
    raw = outcome.data.test[0].numpy()
    stats = pre["normalize"]
    raw = raw * np.asarray(stats["std"]) + np.asarray(stats["mean"])  # the source's own scale
    proba = session.predict_proba(raw)
    expected = (proba[:, 1] >= decision["threshold"]).astype(int)
    assert [int(c) for c in session.predict(raw)] == [
        int(outcome.data.class_names[i]) for i in expected
    ]


def test_a_long_tailed_recipe_end_to_end(tmp_path: Path) -> None:
    recipe = load_recipe(
        ROOT / "recipes/default.yaml",
        [f"output_dir={tmp_path}", "train.epochs=4", "data.imbalance.long_tail_ratio=20",
         "data.imbalance.sampler=balanced", "train.loss.name=ldam", "train.loss.drw_epoch=2",
         "train.decoupled.enabled=true", "train.decoupled.k_neighbors=2", "ensemble.enabled=true",
         "ensemble.kind=easy", "ensemble.members=2", "ensemble.bench=false"],
    )  # fmt: skip
    outcome = run(recipe)
    m = outcome.metrics
    counts = m["data"]["train_class_counts"]
    assert counts[0] / counts[-1] == pytest.approx(20, rel=0.2)
    assert m["train"]["decoupled"]["counts_after"] == [max(counts)] * 10
    imb = m["evaluate"]["imbalance"]
    assert imb["imbalance_ratio"] == pytest.approx(counts[0] / counts[-1])
    assert {"head_recall", "medium_recall", "tail_recall"} <= set(imb)
    assert m["ensemble"]["kind"] == "easy" and "balanced_accuracy" in m["ensemble"]["rows"][-1]
    # the balanced sampler draws the mean class count of every class each epoch
    assert imb["sampled_counts"] == [int(np.mean(counts))] * 10
    assert "class_balance" in outcome.report_path.read_text()


def test_the_imbalance_recipe_from_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dlforge.cli import main

    code = main(["run", str(ROOT / "recipes/imbalance.yaml"), "--set", f"output_dir={tmp_path}",
                 "--set", "train.epochs=3", "--set", "train.loss.drw_epoch=2"])  # fmt: skip
    assert code == 0
    metrics = json.loads((tmp_path / "imbalance" / "metrics.json").read_text())
    counts = metrics["data"]["train_class_counts"]
    assert counts[0] / counts[-1] >= 25  # the 50:1 profile (the tail rounds to a few samples)
    assert metrics["train"]["decoupled"]["method"] == "smote"
    assert "class_balance" in (tmp_path / "imbalance" / "report.html").read_text()


def test_decoupled_smote_copes_with_a_class_of_one(long_tailed_cnn) -> None:  # type: ignore[no-untyped-def]
    import copy

    model, xt, yt = long_tailed_cnn
    keep = torch.ones(len(yt), dtype=torch.bool)
    keep[(yt == 9).nonzero()[1:]] = False  # class 9 down to a single sample
    info = retrain_head(copy.deepcopy(model), xt[keep], yt[keep], 10, "smote", k_neighbors=5)
    assert info["k_neighbors"] == 1 and len(set(info["counts_after"])) == 1


def test_resuming_a_finished_run_does_not_adjust_twice(tmp_path: Path) -> None:
    from dlforge.pipeline import train
    from dlforge.train.checkpoint import read_tensors

    recipe = load_recipe(
        ROOT / "recipes/default.yaml",
        [f"output_dir={tmp_path}", "train.epochs=2", "data.imbalance.long_tail_ratio=10",
         "train.decision.logit_adjust_tau=1.0", "report.enabled=false"],
    )  # fmt: skip
    first = train(recipe)
    best = Path(first["model"]["checkpoint"])
    bias = {k: v for k, v in read_tensors(best).items() if k.endswith("bias")}
    again = train(recipe, resume=True)
    assert again["train"]["decision"] == first["train"]["decision"]
    for k, v in read_tensors(best).items():
        if k in bias:
            torch.testing.assert_close(v, bias[k], rtol=0, atol=0)
    from dlforge.pipeline import run as run_recipe

    outcome = run_recipe(recipe, resume=True)  # the model the later stages get: the adjusted one
    for k, v in outcome.model.state_dict().items():
        if k in bias:
            torch.testing.assert_close(v.cpu(), bias[k], rtol=0, atol=0)


def test_a_fold_or_member_does_not_set_the_runs_decision() -> None:
    from dlforge.stages.train import fit as fit_member

    recipe = load_recipe(None, ["data.source=synthetic", "data.synthetic.n_classes=2",
                                "data.synthetic.weights=[0.9,0.1]", "model.name=mlp",
                                "train.epochs=2", "train.progress=false",
                                "train.decision.threshold=f1"])  # fmt: skip
    data, model = prepare(recipe)
    trainer = fit_member(recipe, data, model)  # writes nothing: a fold's or a member's training
    assert "threshold" in trainer.notes["decision"]
    assert "decision" not in data.preprocessing
