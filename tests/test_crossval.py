"""k-fold cross-validation: scikit-learn's folds, a fresh model per fold, failures recorded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.model_selection import GroupKFold, RepeatedStratifiedKFold, StratifiedKFold

from dlforge.cli import main
from dlforge.evaluate.config import CrossValConfig
from dlforge.evaluate.crossval import fold_indices, run_folds

ROOT = Path(__file__).resolve().parents[1]


def labels(n: int = 120, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 3, n)


@pytest.mark.parametrize("seed", [0, 7])
def test_stratified_and_repeated_folds_are_scikit_learns(seed: int) -> None:
    y = labels()
    ours = fold_indices(y, CrossValConfig(folds=5), seed)
    ref = StratifiedKFold(5, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)
    for (a_train, a_test), (b_train, b_test) in zip(ours, ref, strict=True):
        assert np.array_equal(a_train, b_train) and np.array_equal(a_test, b_test)
    ours = fold_indices(y, CrossValConfig(folds=4, kind="repeated", repeats=2), seed)
    ref = RepeatedStratifiedKFold(n_splits=4, n_repeats=2, random_state=seed).split(y, y)
    assert len(ours) == 8
    for (_, a_test), (_, b_test) in zip(ours, ref, strict=True):
        assert np.array_equal(a_test, b_test)


def test_grouped_folds_keep_groups_together() -> None:
    y = labels()
    groups = np.arange(len(y)) // 7
    ours = fold_indices(y, CrossValConfig(folds=4, kind="group"), 0, groups)
    ref = GroupKFold(4).split(y, y, groups)
    for (_, a_test), (_, b_test) in zip(ours, ref, strict=True):
        assert np.array_equal(a_test, b_test)
    for train, test in ours:
        assert not set(groups[train]) & set(groups[test])
    with pytest.raises(ValueError, match="need a group"):
        fold_indices(y, CrossValConfig(kind="group"), 0)


def test_a_failed_fold_is_recorded_and_the_others_run() -> None:
    y = labels()

    def fit_and_score(fold: int, train: np.ndarray, held: np.ndarray) -> dict[str, float]:
        if fold == 2:
            raise RuntimeError("out of memory in fold 2")
        return {"accuracy": 0.5 + fold / 100}

    out = run_folds(y, CrossValConfig(folds=4), 0, fit_and_score)
    assert out["failed"] == [2]
    assert out["folds"][2]["error"]["message"] == "out of memory in fold 2"
    assert out["summary"]["accuracy"]["mean"] == pytest.approx(np.mean([0.5, 0.51, 0.53]))


def test_cv_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["-q", "cv", str(ROOT / "recipes/default.yaml"), "--folds", "3",
            "--set", f"output_dir={tmp_path}", "--set", "train.epochs=2"]  # fmt: skip
    assert main(args) == 0
    metrics = json.loads((tmp_path / "default/metrics.json").read_text())
    cv = metrics["crossval"]
    assert len(cv["folds"]) == 3 and not cv["failed"]
    assert 0.5 < cv["summary"]["accuracy"]["mean"] <= 1
    assert sum(f["size"] for f in cv["folds"]) == cv["pool_size"]
    assert "Cross-validation: 3 folds" in (tmp_path / "default/report.html").read_text()
    # Its recipe sits beside its results; the run's recipe.yaml is not cv's to overwrite.
    assert (tmp_path / "default/crossval/recipe.yaml").exists()
    assert not (tmp_path / "default/recipe.yaml").exists()
    assert "± " in capsys.readouterr().out
