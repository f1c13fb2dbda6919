"""Known results the shipped recipes must keep reaching."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlforge.pipeline import run
from dlforge.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # about 25 s on 2 cores (minutes on slower machines); CI runs it separately
def test_mnist1d_cnn_recipe_beats_the_paper(tmp_path: Path) -> None:
    """Greydanus (2020) reports 94% for a CNN on MNIST-1D; the shipped recipe must reach it."""
    recipe = load_recipe(
        ROOT / "recipes/mnist1d.yaml", [f"output_dir={tmp_path}", "report.enabled=false"]
    )
    result = run(recipe)
    assert result.metrics["evaluate"]["summary"]["accuracy"] >= 0.94


def test_default_recipe_learns_the_digits(tmp_path: Path) -> None:
    recipe = load_recipe(
        ROOT / "recipes/default.yaml", [f"output_dir={tmp_path}", "report.enabled=false"]
    )
    summary = run(recipe).metrics["evaluate"]["summary"]
    assert summary["accuracy"] >= 0.95
    assert summary["f1_macro"] >= 0.95
