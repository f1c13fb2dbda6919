"""End to end through the CLI: run, evaluate, report, train --resume, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dlforge.cli import main

ROOT = Path(__file__).resolve().parents[1]


def quick(tmp_path: Path, *extra: str) -> list[str]:
    return [
        str(ROOT / "recipes/default.yaml"),
        "--set",
        f"output_dir={tmp_path}",
        "--set",
        "train.epochs=3",
        *[a for e in extra for a in ("--set", e)],
    ]


def test_run_evaluate_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-q", "run", *quick(tmp_path)]) == 0
    run_dir = tmp_path / "default"
    for name in (
        "report.html",
        "metrics.json",
        "recipe.yaml",
        "checkpoints/best.safetensors",
        "checkpoints/best.json",
        "checkpoints/last.state.safetensors",
    ):
        assert (run_dir / name).exists(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["recipe"]["train"]["epochs"] == 3  # the resolved recipe, overrides applied
    assert "train.epochs" not in (run_dir / "recipe.yaml").read_text()
    acc = metrics["evaluate"]["summary"]["accuracy"]
    assert acc > 0.5
    capsys.readouterr()

    # evaluate rebuilds the model and data from the checkpoint alone
    out = tmp_path / "eval.json"
    assert (
        main(["-q", "evaluate", str(run_dir / "checkpoints/best.safetensors"), "--out", str(out)])
        == 0
    )
    assert json.loads(out.read_text())["summary"]["accuracy"] == pytest.approx(acc)

    (run_dir / "report.html").unlink()
    assert main(["-q", "report", str(run_dir)]) == 0
    assert "data-figure='confusion_matrix'" in (run_dir / "report.html").read_text()


def test_train_then_resume(tmp_path: Path) -> None:
    assert main(["-q", "train", *quick(tmp_path, "train.epochs=2")]) == 0
    assert main(["-q", "train", *quick(tmp_path, "train.epochs=4"), "--resume"]) == 0
    metrics = json.loads((tmp_path / "default/metrics.json").read_text())
    assert [e["epoch"] for e in metrics["train"]["epochs"]] == [1, 2, 3, 4]
    assert any("resumed" in e for e in metrics["train"]["events"])


def test_bad_input_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", *quick(tmp_path, "train.optimizer.lrr=0.1")]) == 2
    assert "unknown key 'train.optimizer.lrr'; did you mean 'lr'?" in capsys.readouterr().err
    assert main(["run", *quick(tmp_path, "data.source=npz", f"data.path={tmp_path}/none.npz")]) == 2
    assert "npz file not found" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "nope.safetensors")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_console_entry_point() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dlforge", "models"], capture_output=True, text=True, check=True
    )
    assert "resnet20" in out.stdout.split()
    # sequence models are sized on a signal when an image does not fit them
    assert "102,282 parameters on a 1x40 signal" in out.stdout  # the transformer


def test_quantize_and_bench_stages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    extra = [
        "quantize.enabled=true",
        "quantize.sensitivity=true",
        "bench.enabled=true",
        "bench.rounds=1",
        "bench.latency_iters=3",
        "bench.warmup=1",
        "bench.throughput_iters=1",
    ]
    assert main(["-q", "run", *quick(tmp_path, *extra)]) == 0
    run_dir = tmp_path / "default"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    q = metrics["quantize"]
    assert q["ort_vs_fake_quant_top1_agreement"] >= 0.99
    assert abs(q["accuracy"]["onnxruntime_int8"] - q["accuracy"]["fp32"]) < 0.05
    variants = [r["variant"] for r in metrics["bench"]["rows"]]
    assert variants[0] == "fp32 eager (PyTorch)" and "int8 (ONNX Runtime)" in variants
    assert metrics["bench"]["rows"][0]["throughput_x"] == 1.0
    html = (run_dir / "report.html").read_text()
    assert "data-figure='tradeoff'" in html and "Quantization (int8)" in html
    assert "Per-layer weight sensitivity" in html
    assert len(q["mixed_precision"]["sensitivity"]) == 3 * 3  # 3 layers x bits 8, 4, 2
    capsys.readouterr()

    ckpt = str(run_dir / "checkpoints/best.safetensors")
    out = tmp_path / "q"
    assert main(["-q", "quantize", ckpt, "--out", str(out), "--set", "quantize.observer=mse"]) == 0
    saved = json.loads((out / "quantize.json").read_text())
    assert saved["quantize"]["config"]["observer"] == "mse"
    # the run folder's metrics and report now show this quantization
    assert json.loads((run_dir / "metrics.json").read_text())["quantize"]["observer"] == "mse"
    assert (out / "model_int8.onnx").stat().st_size < 0.35 * (
        out / "model_fp32.onnx"
    ).stat().st_size
    assert (
        main(
            [
                "-q",
                "bench",
                ckpt,
                "--onnx",
                str(out / "model_int8.onnx"),
                "--set",
                "bench.rounds=1",
                "--set",
                "bench.latency_iters=2",
                "--set",
                "bench.warmup=1",
            ]
        )
        == 0
    )
    assert "model_int8 (ONNX Runtime)" in capsys.readouterr().out
    assert main(["bench", ckpt, "--onnx", str(tmp_path / "none.onnx")]) == 2
    assert "ONNX file not found" in capsys.readouterr().err


def test_qat_and_codebook_from_a_recipe(tmp_path: Path) -> None:
    extra = [
        "quantize.enabled=true",
        "quantize.method=qat",
        "quantize.qat.epochs=1",
        "quantize.codebook_bits=4",
        "quantize.codebook.epochs=1",
        "quantize.sensitivity=true",
        "quantize.sensitivity_bits=[8, 4]",
        "quantize.mixed_precision_max_bytes=12000",
        "report.enabled=true",
    ]
    assert main(["-q", "run", *quick(tmp_path, *extra)]) == 0
    q = json.loads((tmp_path / "default/metrics.json").read_text())["quantize"]
    assert q["method"] == "qat" and q["folded_batch_norms"] == ["1", "4"]
    assert q["ort_vs_fake_quant_top1_agreement"] >= 0.99
    cb = q["codebook"]
    assert cb["weight_bytes"] < cb["fp32_weight_bytes"] / 7  # 4-bit indices + 16-entry codebooks
    assert "k-means codebooks" in (tmp_path / "default/report.html").read_text()
    assert q["mixed_precision"]["weight_bytes"] <= 12000  # the size budget holds


def test_compress_stage_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-q", "train", *quick(tmp_path)]) == 0
    ckpt = str(tmp_path / "default/checkpoints/best.safetensors")
    sets = [
        "compress.techniques=[prune, structured, lowrank, deep_compression, distill]",
        "compress.prune.finetune.epochs=2",
        "compress.structured.finetune.epochs=1",
        "compress.lowrank.finetune.epochs=1",
        "compress.deep_compression.finetune.epochs=3",
        "compress.deep_compression.codebook.epochs=1",
        "compress.distill.train.epochs=2",
        "compress.bench_rounds=1",
    ]
    args = ["-q", "compress", ckpt, "--recipe", str(ROOT / "recipes/deep_compression.yaml")]
    assert main([*args, *[a for s in sets for a in ("--set", s)]]) == 0
    out = capsys.readouterr().out
    assert all(v in out for v in ("baseline", "prune", "lowrank", "deep_compression", "distill"))
    result = json.loads((tmp_path / "default/compress/compress.json").read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert rows["prune"]["nonzero_params"] < 0.15 * rows["baseline"]["nonzero_params"]
    assert rows["prune"]["onnx_bytes"] == rows["baseline"]["onnx_bytes"]  # dense shapes remain
    assert rows["lowrank"]["params"] < rows["baseline"]["params"]
    assert rows["structured"]["macs"] < 0.6 * rows["baseline"]["macs"]  # about half the MACs
    assert rows["deep_compression"]["compression_x"] > 10
    assert rows["distill"]["params"] < 0.35 * rows["baseline"]["params"]
    assert rows["student_alone"]["params"] == rows["distill"]["params"]
    assert isinstance(result["notes"]["distill"]["gap_closed"], float)
    metrics = json.loads((tmp_path / "default/metrics.json").read_text())
    assert metrics["compress"]["rows"][0]["variant"] == "baseline"
    assert main(["-q", "report", str(tmp_path / "default")]) == 0
    html = (tmp_path / "default/report.html").read_text()
    assert "data-figure='pareto'" in html and "zeros buy no speed" in html
    assert "the baseline&#x27;s ONNX Runtime throughput" in html  # with the measured figure


def test_resume_of_a_finished_run_keeps_its_evaluation(tmp_path: Path) -> None:
    assert main(["-q", "run", *quick(tmp_path, "train.epochs=2")]) == 0
    metrics_path = tmp_path / "default/metrics.json"
    before = json.loads(metrics_path.read_text())
    assert main(["-q", "train", *quick(tmp_path, "train.epochs=2"), "--resume"]) == 0
    after = json.loads(metrics_path.read_text())
    assert after["evaluate"] == before["evaluate"]  # the weights did not change
    assert "Metrics (test split" in (tmp_path / "default/report.html").read_text()
    # Training further changes the weights: the old evaluation no longer describes them.
    assert main(["-q", "train", *quick(tmp_path, "train.epochs=3"), "--resume"]) == 0
    assert "evaluate" not in json.loads(metrics_path.read_text())


def test_a_failed_stage_keeps_what_the_earlier_ones_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Quantizing a model fx cannot trace fails in its own stage: training, evaluation and the
    report stay, the error is recorded under "quantize", and the command says so in one line."""
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    extra = ["model={name: 'userzoo:branchy'}", "quantize.enabled=true", "bench.enabled=true"]
    assert main(["run", *quick(tmp_path, *extra)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dlforge run: error: stage 'quantize' failed:")
    assert "cannot trace" in err[0] and "Traceback" not in err[0]
    metrics = json.loads((tmp_path / "default/metrics.json").read_text())
    assert metrics["evaluate"]["summary"]["accuracy"] > 0.3
    assert metrics["quantize"]["error"]["type"] == "QuantizationError"
    assert "bench" not in metrics  # the stages after the failed one did not run
    html = (tmp_path / "default/report.html").read_text()
    assert "Quantization (int8): failed" in html and "Metrics (test split" in html
    # --debug shows the traceback instead
    with pytest.raises(Exception, match="cannot trace"):
        main(["--debug", "run", *quick(tmp_path, *extra)])


def test_transformer_recipe_end_to_end(tmp_path: Path) -> None:
    """The shipped transformer recipe, shortened: train, int8, heads/FFN pruning, low-rank,
    a shallower distilled student, and a report with attention maps."""
    sets = [
        f"output_dir={tmp_path}",
        "data.mnist1d_samples=600",
        "train.epochs=2",
        "compress.structured.finetune.epochs=1",
        "compress.lowrank.finetune.epochs=1",
        "compress.distill.train.epochs=1",
        "compress.bench_rounds=1",
    ]
    args = ["-q", "run", str(ROOT / "recipes/transformer.yaml")]
    assert main([*args, *[a for s in sets for a in ("--set", s)]]) == 0
    run_dir = tmp_path / "mnist1d-transformer"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    q = metrics["quantize"]
    assert q["kernels"]["int8"].get("MatMulIntegerToFloat", 0) >= 12  # 4 projections x 3 layers
    assert q["kernels"]["int8"].get("QLinearMatMul", 0) >= 6  # QK^T and AV per layer
    assert "normalisation stays float" in q["float_reasons"]["encoder.norm"]
    rows = {r["variant"]: r for r in metrics["compress"]["rows"]}
    assert rows["structured"]["macs"] < 0.75 * rows["baseline"]["macs"]
    assert rows["lowrank"]["params"] < rows["baseline"]["params"]
    assert rows["distill"]["params"] < 0.5 * rows["baseline"]["params"]  # 1 layer of 3
    assert len(metrics["evaluate"]["attention"]["weights"]) == 4
    html = (run_dir / "report.html").read_text()
    assert "data-figure='attention'" in html and "MatMulIntegerToFloat" in html
