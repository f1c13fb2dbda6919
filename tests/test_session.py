"""A run folder's exported model answers raw inputs like the PyTorch model did."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dlforge.data.builtin import digits as raw_digits
from dlforge.deploy import Session
from dlforge.pipeline import run
from dlforge.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]


def test_session_from_run_folder(tmp_path: Path) -> None:
    recipe = load_recipe(
        ROOT / "recipes/default.yaml",
        [
            f"output_dir={tmp_path}",
            "train.epochs=3",
            "quantize.enabled=true",
            "quantize.observer=auto",
            "report.enabled=false",
        ],
    )
    result = run(recipe)
    q = result.metrics["quantize"]
    assert q["observer"] in {t["observer"] for t in q["observer_search"]}
    raw = raw_digits().x[:200]  # un-normalised, as the data source yields it
    for variant in ("fp32", "int8"):
        session = Session.from_run(result.run_dir, variant, threads=1)
        labels = session.predict(raw)
        assert set(labels) <= set(result.data.class_names)
        stats = result.data.preprocessing["normalize"]
        x = (raw - np.array(stats["mean"]).reshape(1, -1, 1, 1)) / np.array(stats["std"]).reshape(
            1, -1, 1, 1
        )
        with torch.no_grad():
            expected = (
                result.model.cpu().eval()(torch.from_numpy(x.astype(np.float32))).argmax(1).numpy()
            )
        agreement = np.mean([int(a) == b for a, b in zip(labels, expected)])
        assert agreement >= (1.0 if variant == "fp32" else 0.98)
        np.testing.assert_allclose(session.predict_proba(raw[:5]).sum(1), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match=r"inputs of shape \(64,\)"):
        session.predict(raw.reshape(200, -1))
    with pytest.raises(FileNotFoundError, match="run the quantize stage"):
        Session.from_run(tmp_path / "nowhere")
