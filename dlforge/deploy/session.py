"""Load an exported model together with its preprocessing, and predict on raw inputs.

``Session.from_run("runs/default")`` opens the run's int8 (or fp32) ONNX file and the
normalisation statistics recorded at training time, so callers pass data exactly as the data
source produced it, before normalisation. ``backend="openvino"`` runs the same file on OpenVINO;
``precision`` picks the file (``int8`` or ``fp32``) or, on OpenVINO, ``bf16``/``auto``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from dlforge.config import DlforgeError
from dlforge.data.normalize import apply_normalizer
from dlforge.deploy.backends import InferenceModel, check_backend, file_for, open_model

PREPROCESSING_FILE = "preprocessing.json"
# Sources whose images are read as pixels scaled to [0, 1] (digits: its 0-16 ink, /16).
IMAGE_SOURCES = ("image_folder", "cifar10", "mnist_idx", "digits")
# Formats PIL decodes itself (EPS and friends would hand the bytes to other programs).
IMAGE_FORMATS = ["PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF"]


class InputError(DlforgeError, ValueError):
    """Inputs that do not fit the model: the message says what was expected."""


class Session:
    def __init__(
        self,
        onnx_path: str | Path,
        preprocessing: dict[str, Any],
        threads: int | None = None,
        backend: str = "ort",
        precision: str | None = None,
    ) -> None:
        if precision is None:
            precision = "int8" if "int8" in Path(onnx_path).name else "fp32"
        self.model: InferenceModel = open_model(onnx_path, backend, precision, threads)
        self.preprocessing = preprocessing
        self.class_names: list[str] = preprocessing.get("class_names", [])
        stored = tuple(preprocessing.get("input_shape", ()))
        own = self.model.input_shape[1:]
        if not stored and own and all(d is not None for d in own):  # a bare ONNX file
            stored = own
        self.input_shape: tuple[int, ...] = tuple(int(d) for d in stored if d is not None)

    @property
    def backend(self) -> str:
        return self.model.backend

    @property
    def precision(self) -> str:
        return self.model.precision

    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        precision: str = "int8",
        threads: int | None = None,
        backend: str = "ort",
    ) -> Session:
        """The run folder's exported model: ``precision`` int8 (the QDQ file) or fp32, or on
        OpenVINO also bf16 or auto (the fp32 file run at that precision)."""
        check_backend(backend, precision)
        deploy = Path(run_dir) / "deploy"
        onnx_path = deploy / file_for(precision)
        pre = deploy / PREPROCESSING_FILE
        for p in (onnx_path, pre):
            if not p.exists():
                raise FileNotFoundError(
                    f"{p} not found: run the quantize stage (dlforge quantize) first"
                )
        return cls(onnx_path, json.loads(pre.read_text()), threads, backend, precision)

    def check_inputs(self, x: np.ndarray) -> np.ndarray:
        """``x`` as a float32 batch of the model's input shape; one sample gets a batch axis."""
        x = np.asarray(x)
        if x.dtype.kind not in "fiub":
            raise InputError(f"inputs of dtype {x.dtype}; the model expects numbers (float32)")
        x = x.astype(np.float32, copy=False)
        if self.input_shape and tuple(x.shape) == self.input_shape:
            x = x[None]
        if self.input_shape and tuple(x.shape[1:]) != self.input_shape:
            raise InputError(
                f"inputs of shape {tuple(x.shape[1:])}; the model expects "
                f"{self.input_shape} per sample (a batch of shape (N, "
                f"{', '.join(map(str, self.input_shape))}))"
            )
        if len(x) == 0:
            raise InputError("an empty batch: send at least one sample")
        return x

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        x = self.check_inputs(x)
        stats = self.preprocessing.get("normalize")
        return apply_normalizer(x, stats) if stats else x

    def logits(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        x = self._prepare(x)
        return np.concatenate(
            [self.model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        )

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return softmax(self.logits(x))

    @property
    def decision(self) -> dict[str, Any] | None:
        """The stored decision rule (a binary threshold chosen on the validation split)."""
        decision = self.preprocessing.get("decision")
        return decision if isinstance(decision, dict) else None

    def decide(self, logits: np.ndarray) -> np.ndarray:
        """Class ids from logits, under the stored decision rule (else argmax)."""
        from dlforge.evaluate.thresholds import apply_threshold

        return apply_threshold(softmax(logits), self.decision)

    def predict(self, x: np.ndarray) -> list[str]:
        return self.labels(self.decide(self.logits(x)))

    def labels(self, ids: np.ndarray) -> list[str]:
        names = self.class_names
        return [names[i] for i in ids] if names else [str(i) for i in ids]

    @property
    def image_mode(self) -> str | None:
        """PIL's mode for image uploads (``L`` or ``RGB``), or None for a model not trained on
        images read as [0, 1] pixels (arrays of any other source are not images, whatever their
        shape: an .npz of 0-255 pixels would be scaled differently)."""
        shape = self.input_shape
        if self.preprocessing.get("source") not in IMAGE_SOURCES:
            return None
        if len(shape) == 3 and shape[0] in (1, 3) and shape[1] > 1 and shape[2] > 1:
            return "L" if shape[0] == 1 else "RGB"
        return None

    def decode_image(self, data: bytes, max_pixels: int = 1 << 24) -> np.ndarray:
        """A PNG/JPEG file as the data source reads images: the model's channels (grey or RGB),
        resized bilinearly to its height and width, scaled to [0, 1]; shape (C, H, W)."""
        import io

        from PIL import Image, UnidentifiedImageError

        mode = self.image_mode
        if mode is None:
            raise InputError(
                f"this model takes inputs of shape {self.input_shape}, not images: "
                "send an array (JSON or .npy)"
            )
        _, h, w = self.input_shape
        try:
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
                if img.width * img.height > max_pixels:  # refuse before decoding a pixel bomb
                    raise InputError(
                        f"an image of {img.width}x{img.height} pixels; at most {max_pixels}"
                    )
                arr = np.asarray(img.convert(mode).resize((w, h), Image.Resampling.BILINEAR))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
                Image.DecompressionBombError) as exc:  # fmt: skip
            if isinstance(exc, InputError):
                raise
            if isinstance(exc, UnidentifiedImageError):
                reason = f"not one of {', '.join(IMAGE_FORMATS)}"
            else:
                reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            raise InputError(f"not a readable image ({reason})") from None
        arr = arr.astype(np.float32) / 255.0
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
