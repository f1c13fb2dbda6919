"""Load an exported model together with its preprocessing, and predict on raw inputs.

``Session.from_run("runs/default")`` opens the run's int8 (or fp32) ONNX file and the
normalisation statistics recorded at training time, so callers pass data exactly as the data
source produced it, before normalisation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from dlforge.data.splits import apply_normalizer
from dlforge.deploy.runtime import OrtModel

PREPROCESSING_FILE = "preprocessing.json"


class Session:
    def __init__(
        self, onnx_path: str | Path, preprocessing: dict[str, Any], threads: int | None = None
    ) -> None:
        self.model = OrtModel(onnx_path, threads)
        self.preprocessing = preprocessing
        self.class_names: list[str] = preprocessing.get("class_names", [])
        self.input_shape = tuple(preprocessing.get("input_shape", ()))

    @classmethod
    def from_run(
        cls, run_dir: str | Path, variant: str = "int8", threads: int | None = None
    ) -> Session:
        deploy = Path(run_dir) / "deploy"
        onnx_path = deploy / f"model_{variant}.onnx"
        pre = deploy / PREPROCESSING_FILE
        for p in (onnx_path, pre):
            if not p.exists():
                raise FileNotFoundError(
                    f"{p} not found: run the quantize stage (dlforge quantize) first"
                )
        return cls(onnx_path, json.loads(pre.read_text()), threads)

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if self.input_shape and tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"inputs of shape {tuple(x.shape[1:])}; the model expects {self.input_shape}"
            )
        stats = self.preprocessing.get("normalize")
        return apply_normalizer(x, stats) if stats else x

    def logits(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return self.model.predict(self._prepare(x), batch_size)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        z = self.logits(x).astype(np.float64)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, x: np.ndarray) -> list[str]:
        ids = self.logits(x).argmax(axis=1)
        return [self.class_names[i] for i in ids] if self.class_names else [str(i) for i in ids]
