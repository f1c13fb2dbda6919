"""Quantization: accuracy, speed and size of every scheme against fp32, on three models.

Models: the default digits CNN, the MNIST-1D CNN recipe and ResNet-20 (trained on the digits
upsampled to 32x32, the CIFAR input size; CIFAR-10 itself cannot be downloaded here). For each
seed a model is trained, then: fp32 eager, fp32 ONNX Runtime, dlforge int8 PTQ and QAT (QDQ
ONNX, run by ONNX Runtime), ONNX Runtime's own ``quantize_static`` on the same float ONNX and
calibration batches (the reference), bf16 autocast, 4-bit weight-only and a 4-bit k-means
codebook (fine-tuned). Speed is measured for the first seed with the dlforge harness
(interleaved rounds, medians); accuracy is averaged over seeds.

    python benchmarks/quantize.py [--seeds 3] [--models digits_cnn mnist1d_cnn resnet20]
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import save, table

from dlforge.compress.quantize import QuantConfig, ptq
from dlforge.compress.quantize.codebook import CodebookConfig, share_weights
from dlforge.compress.quantize.fakequant import qat
from dlforge.compress.quantize.sensitivity import quantize_weights, weight_layers
from dlforge.data import DataConfig, load_data
from dlforge.deploy.bench import (
    BenchConfig,
    Variant,
    add_ratios,
    benchmark,
    ort_runner,
    torch_runner,
)
from dlforge.deploy.export import export_onnx
from dlforge.models import create_model
from dlforge.train import OptimizerConfig, ScheduleConfig, TrainConfig, Trainer

logging.getLogger("dlforge").setLevel(logging.ERROR)
THREADS = 2

MODELS = {
    "digits_cnn": dict(
        source="digits",
        model=("cnn", {"channels": [32, 64], "dropout": 0.1}),
        epochs=30,
        optim=OptimizerConfig(name="adamw", lr=3e-3, weight_decay=1e-2),
        upsample=None,
    ),
    "mnist1d_cnn": dict(
        source="mnist1d",
        model=(
            "cnn",
            {
                "channels": [32, 64, 64],
                "kernel_size": 5,
                "stride": [1, 2, 2],
                "pool": "flatten",
                "dropout": 0.2,
            },
        ),
        epochs=40,
        optim=OptimizerConfig(name="adamw", lr=3e-3, weight_decay=5e-2),
        upsample=None,
    ),
    "resnet20": dict(
        source="digits",
        model=("resnet20", {}),
        epochs=15,
        optim=OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4),
        upsample=32,
    ),
}


def data_for(spec: dict, seed: int):
    data = load_data(DataConfig(source=spec["source"]), seed=seed)
    if spec["upsample"]:
        size = spec["upsample"]
        for split in ("train", "val", "test"):
            x, y = getattr(data, split)
            setattr(
                data, split, (F.interpolate(x, size=(size, size), mode="bilinear").contiguous(), y)
            )
    return data


def train(spec: dict, data, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    name, kwargs = spec["model"]
    model = create_model(name, data.input_shape, data.num_classes, **kwargs)
    cfg = TrainConfig(
        epochs=spec["epochs"],
        optimizer=spec["optim"],
        progress=False,
        schedule=ScheduleConfig(name="cosine", warmup_steps=20),
    )
    Trainer(model, cfg).fit(
        data.loader("train", 64, True, torch.Generator().manual_seed(seed)), data.loader("val", 256)
    )
    return model.eval().to(memory_format=torch.contiguous_format)


def reference_static(fp32_path: Path, calib: np.ndarray, out: Path) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": calib[i : i + 64]} for i in range(0, len(calib), 64)])

        def get_next(self):
            return next(self.batches, None)

    pre = out.with_name("ref_pre.onnx")
    quant_pre_process(str(fp32_path), str(pre))
    # The same choices as dlforge's default: QDQ, per-channel int8 weights, uint8 activations.
    quantize_static(
        str(pre),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return out


def accuracy(run, x: np.ndarray, y: np.ndarray) -> float:
    logits = np.concatenate([run(x[i : i + 256]) for i in range(0, len(x), 256)])
    return float((logits.argmax(1) == y).mean())


def variants_for(model, data, seed: int, tmp: Path) -> tuple[list[Variant], dict[str, float]]:
    x_train = data.train[0]
    calib = [x_train[i : i + 64] for i in range(0, min(len(x_train), 64 * 16), 64)]
    example = data.test[0][:1]
    fp32_path = export_onnx(model, example, tmp / "fp32.onnx")
    ptq_path = export_onnx(ptq(model, calib).model, example, tmp / "ptq_int8.onnx")
    qat_cfg = TrainConfig(
        epochs=3, progress=False, optimizer=OptimizerConfig(name="adamw", lr=1e-4)
    )
    qat_plan = qat(
        copy.deepcopy(model),
        data.loader("train", 64, True, torch.Generator().manual_seed(seed)),
        None,
        QuantConfig(),
        qat_cfg,
        freeze_bn_epoch=1,
    )
    qat_path = export_onnx(qat_plan.model, example, tmp / "qat_int8.onnx")
    ref_path = reference_static(fp32_path, torch.cat(calib).numpy(), tmp / "ref_int8.onnx")
    w4 = quantize_weights(model, dict.fromkeys(weight_layers(model), 4))
    shared = copy.deepcopy(model)
    share_weights(shared, CodebookConfig(bits=4))
    tune = TrainConfig(epochs=2, progress=False, optimizer=OptimizerConfig(name="adamw", lr=1e-4))
    Trainer(shared, tune).fit(data.loader("train", 64, True, torch.Generator().manual_seed(seed)))
    shared.eval()
    n_weights = sum(m.weight.numel() for m in weight_layers(model).values())
    n_other = sum(p.numel() for p in model.parameters()) - n_weights
    n_layers = len(weight_layers(model))
    packed = {  # bytes of the weights as stored, plus the other parameters in fp32
        "4-bit weight-only": n_weights / 2 + n_other * 4 + n_layers * 64 * 4,
        "4-bit k-means codebook": n_weights / 2 + n_other * 4 + n_layers * 16 * 4,
    }
    variants = [
        Variant("fp32 eager (PyTorch)", torch_runner(model)),
        Variant("fp32 ONNX Runtime", ort_runner(fp32_path, THREADS), file=fp32_path),
        Variant("dlforge int8 PTQ (ORT)", ort_runner(ptq_path, THREADS), file=ptq_path),
        Variant("dlforge int8 QAT (ORT)", ort_runner(qat_path, THREADS), file=qat_path),
        Variant("ORT quantize_static int8", ort_runner(ref_path, THREADS), file=ref_path),
        Variant("bf16 autocast (PyTorch)", torch_runner(model, torch.bfloat16)),
        Variant(
            "4-bit weight-only (eager)",
            torch_runner(w4),
            notes={"packed_bytes": packed["4-bit weight-only"]},
        ),
        Variant(
            "4-bit k-means codebook (eager)",
            torch_runner(shared),
            notes={"packed_bytes": packed["4-bit k-means codebook"]},
        ),
    ]
    x, y = data.test[0].numpy(), data.test[1].numpy()
    accs = {v.name: accuracy(v.run, x, y) for v in variants}
    for v in variants:
        v.accuracy = accs[v.name]
    return variants, accs


def run_model(name: str, seeds: int, bench_cfg: BenchConfig) -> dict:
    spec = MODELS[name]
    accs: dict[str, list[float]] = {}
    rows = None
    for seed in range(seeds):
        data = data_for(spec, seed)
        model = train(spec, data, seed)
        with tempfile.TemporaryDirectory() as tmp:
            variants, acc = variants_for(model, data, seed, Path(tmp))
            for k, v in acc.items():
                accs.setdefault(k, []).append(v)
            if seed == 0:
                rows = add_ratios(
                    benchmark(variants, data.test[0].numpy(), bench_cfg), variants[0].name
                )
    assert rows is not None
    fp32 = statistics.mean(accs["fp32 eager (PyTorch)"])
    out = []
    for r in rows:
        a = accs[r["variant"]]
        out.append(
            {
                "variant": r["variant"],
                "acc (mean)": statistics.mean(a),
                "acc std": statistics.pstdev(a),
                "drop (points)": 100 * (fp32 - statistics.mean(a)),
                "p50 ms (b=1)": r["latency_p50_ms"],
                "p99 ms": r["latency_p99_ms"],
                "samples/s (b=64)": r["throughput_b64"],
                "vs eager": r["throughput_x"],
                "file bytes": r["file_bytes"] or r.get("packed_bytes") or "",
                "size vs fp32 ONNX": "",
            }
        )
    fp32_bytes = next(r["file_bytes"] for r in rows if r["variant"] == "fp32 ONNX Runtime")
    for r in out:
        if r["file bytes"]:
            r["size vs fp32 ONNX"] = r["file bytes"] / fp32_bytes
    return {"rows": out, "accuracies": accs}


def checks(model: str, rows: list[dict]) -> list[str]:
    by = {r["variant"]: r for r in rows}
    ours, ref = by["dlforge int8 PTQ (ORT)"], by["ORT quantize_static int8"]
    return [
        f"{model}: int8 PTQ drop {ours['drop (points)']:.2f} points, QAT {by['dlforge int8 QAT (ORT)']['drop (points)']:.2f} (target <= 0.3)",
        f"{model}: dlforge int8 throughput {ours['samples/s (b=64)'] / ref['samples/s (b=64)']:.2f}x the ORT reference (target >= 0.95), "
        f"{ours['vs eager']:.2f}x eager fp32 (target >= 5)",
        f"{model}: int8 file {ours['size vs fp32 ONNX']:.3f}x fp32 (target <= 0.27); reference {ref['size vs fp32 ONNX']:.3f}x",
        f"{model}: accuracy drop dlforge {ours['drop (points)']:.2f} vs reference {ref['drop (points)']:.2f} points",
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    bench_cfg = BenchConfig(threads=THREADS, rounds=args.rounds)
    results, notes = {}, []
    for name in args.models:
        results[name] = run_model(name, args.seeds, bench_cfg)
        print(
            f"\n## {name} ({args.seeds} seeds for accuracy; speed from seed 0, {THREADS} threads)\n"
        )
        print(table(results[name]["rows"]))
        notes += checks(name, results[name]["rows"])
    print("\n" + "\n".join(notes))
    save("quantize", {"results": results, "checks": notes, "args": vars(args)})


if __name__ == "__main__":
    main()
