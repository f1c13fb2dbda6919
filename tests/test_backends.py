"""OpenVINO runs the same fp32 and QDQ int8 files as ONNX Runtime, with the same answers; the
precision it runs at is read back, not assumed; the bench stage compares every backend and
precision and picks the fastest within the accuracy tolerance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dlforge.compress.quantize.fakequant import ptq
from dlforge.data import DataBundle
from dlforge.deploy.backends import BackendError, open_model
from dlforge.deploy.bench import is_quantized, pick_fastest
from dlforge.deploy.config import BenchConfig
from dlforge.deploy.export import export_onnx
from dlforge.deploy.session import Session
from dlforge.stages.bench import bench_stage


@pytest.fixture(scope="module")
def files(small_cnn: nn.Module, digits: DataBundle, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("backends")
    x = digits.train[0]
    plan = ptq(small_cnn, [x[i : i + 64] for i in range(0, 512, 64)])
    fp32 = export_onnx(small_cnn, x[:1], out / "model_fp32.onnx")
    int8 = export_onnx(plan.model, x[:1], out / "model_int8.onnx")
    return {"fp32": Path(fp32), "int8": Path(int8)}


def test_openvino_answers_as_onnx_runtime(files, digits: DataBundle, small_cnn) -> None:
    x = digits.test[0].numpy()
    ort32 = open_model(files["fp32"], "ort", "fp32", threads=1)
    ov32 = open_model(files["fp32"], "openvino", "fp32", threads=1)
    assert (ov32.backend, ov32.precision) == ("openvino", "fp32")
    assert ov32.input_shape == (None, 1, 8, 8)  # the batch stays dynamic
    np.testing.assert_allclose(ov32(x), ort32(x), rtol=1e-4, atol=1e-4)
    ort8 = open_model(files["int8"], "ort", "int8", threads=1)(x)
    ov8 = open_model(files["int8"], "openvino", "int8", threads=1)(x)
    assert (ov8.argmax(1) == ort8.argmax(1)).mean() >= 0.99
    assert np.abs(ov8 - ort8).max() < 0.05 * np.abs(ort8).max()
    with torch.no_grad():
        eager = small_cnn(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ov32(x), eager, rtol=1e-4, atol=1e-4)


def test_bf16_is_reported_and_close(files, digits: DataBundle) -> None:
    x = digits.test[0].numpy()
    bf16 = open_model(files["fp32"], "openvino", "bf16", threads=1)
    assert bf16.precision == "bf16"  # read back from the compiled model
    fp32 = open_model(files["fp32"], "openvino", "fp32", threads=1)(x)
    assert (bf16(x).argmax(1) == fp32.argmax(1)).mean() >= 0.98
    auto = open_model(files["fp32"], "openvino", "auto", threads=1)
    assert auto.precision in ("fp32", "bf16")  # what OpenVINO chose on this CPU, said plainly


def test_unknown_backends_and_precisions_are_refused(files) -> None:
    with pytest.raises(BackendError, match="backend 'tensorrt' is unknown"):
        open_model(files["fp32"], "tensorrt", "fp32")
    with pytest.raises(BackendError, match="precision 'bf16' is not offered by backend 'ort'"):
        open_model(files["fp32"], "ort", "bf16")
    with pytest.raises(BackendError, match="precision 'fp8'"):
        Session.from_run("anywhere", "fp8")


def test_session_runs_on_openvino(files, digits: DataBundle) -> None:
    pre = {"input_shape": [1, 8, 8], "class_names": digits.class_names}
    x = digits.test[0].numpy()[:50]
    ort = Session(files["int8"], pre, threads=1)
    ov = Session(files["int8"], pre, threads=1, backend="openvino")
    assert (ort.precision, ov.precision, ov.backend) == ("int8", "int8", "openvino")
    assert np.mean([a == b for a, b in zip(ort.predict(x), ov.predict(x))]) >= 0.98


def test_is_quantized(files) -> None:
    assert is_quantized(files["int8"]) and not is_quantized(files["fp32"])


def test_pick_fastest_respects_the_accuracy_tolerance() -> None:
    rows = [
        {"variant": "eager", "accuracy": 0.90, "throughput_b64": 100.0, "throughput_x": 1.0},
        {"variant": "int8 fast", "accuracy": 0.88, "throughput_b64": 900.0, "throughput_x": 9.0},
        {"variant": "int8", "accuracy": 0.897, "throughput_b64": 500.0, "throughput_x": 5.0},
    ]
    best = pick_fastest(rows, 0.90, tolerance=0.005)
    assert best is not None and best["variant"] == "int8" and best["eligible"] == 2
    assert pick_fastest(rows, 0.90, tolerance=0.05)["variant"] == "int8 fast"  # type: ignore[index]
    assert pick_fastest(rows, None, 0.005) is None


def test_bench_stage_compares_backends_and_precisions(small_cnn, digits, files) -> None:
    cfg = BenchConfig(rounds=1, warmup=1, latency_iters=5, throughput_iters=1, min_round_s=0,
                      backends=["ort", "openvino"], precisions=["fp32", "int8", "bf16"])  # fmt: skip
    result = bench_stage(small_cnn, digits, cfg, files)
    got = {(r.get("backend"), r.get("precision")) for r in result["rows"]}
    assert got >= {("pytorch", "fp32"), ("ort", "fp32"), ("ort", "int8"),
                   ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8")}  # fmt: skip
    assert ("ort", "bf16") not in got
    best = result["fastest"]
    eager = result["rows"][0]["accuracy"]
    assert best["accuracy"] >= eager - cfg.accuracy_tolerance
    fastest_row = next(r for r in result["rows"] if r["variant"] == best["variant"])
    within = [r for r in result["rows"] if r["accuracy"] >= eager - cfg.accuracy_tolerance]
    assert fastest_row["throughput_b64"] == max(r["throughput_b64"] for r in within)


def test_only_image_sources_take_image_uploads(files) -> None:
    import io

    from PIL import Image

    from dlforge.deploy.session import InputError

    png = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png, format="PNG")
    digits = Session(files["fp32"], {"source": "digits", "input_shape": [1, 8, 8]})
    assert digits.image_mode == "L" and digits.decode_image(png.getvalue()).shape == (1, 8, 8)
    npz = Session(files["fp32"], {"source": "npz", "input_shape": [1, 8, 8]})  # pixels 0-255?
    assert npz.image_mode is None
    with pytest.raises(InputError, match="not images"):
        npz.decode_image(png.getvalue())
