"""Why the compression settings are what they are: two measurements behind BENCHMARKS.md.

1. Channel widths and ONNX Runtime speed. Each model (untrained weights: speed does not depend
   on them) is pruned to about half of its MACs twice, once with exact channel counts
   (``round_to=1``) and once in multiples of 16, and all three are timed together, interleaved.
2. What 40x Deep Compression would cost the small CNNs: the pipeline at 90% and at 95%
   sparsity, on the settings of ``benchmarks/compress.py``, over seeds.
3. The gradual-pruning schedule: 90% reached on the last of 40 epochs at a constant rate (this
   toolkit's first setting) against a ramp over the first half with a cosine-decayed rate.
4. The distillation yardstick: the MNIST-1D half-width student trained alone and distilled,
   both at the fine-tuning rate (1e-3, the first setting) and at a from-scratch rate (3e-3).

    python benchmarks/compress_ablations.py [--seeds 3] [--only widths deep_compression ...]
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import logging
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import RESULTS, save, table
from compress import SETTINGS
from quantize import MODELS, data_for, train

from dlforge.compress.deep_compression import DeepCompressionConfig, deep_compression
from dlforge.compress.distill import DistillationStep, Distiller, width_scaled
from dlforge.compress.prune import GradualPruner, make_permanent
from dlforge.compress.structured import ChannelPrune, count_macs, prune_channels
from dlforge.config import from_dict
from dlforge.deploy.bench import Variant, add_ratios, benchmark, ort_runner
from dlforge.deploy.export import export_onnx
from dlforge.models import create_model
from dlforge.train import OptimizerConfig, ScheduleConfig, TrainConfig, Trainer

logging.getLogger("dlforge").setLevel(logging.ERROR)


def widths(name: str, tmp: Path) -> list[dict[str, Any]]:
    spec = MODELS[name]
    data = data_for(spec, 0)
    torch.manual_seed(0)
    model = create_model(spec["model"][0], data.input_shape, data.num_classes, **spec["model"][1])
    example = data.test[0][:1]
    full = count_macs(model, example)
    models = {"baseline": model.eval()}
    for step in (1, 16):
        plan = ChannelPrune(macs_removed=0.5, round_to=step)
        models[f"half MACs, round_to={step}"] = prune_channels(model, example, plan).model
    variants, rows = [], []
    for i, (label, m) in enumerate(models.items()):
        path = export_onnx(m, example, tmp / f"{name}_{i}.onnx")
        variants.append(Variant(label, ort_runner(path, 2), file=path))
        convs = [
            c.out_channels for c in m.modules() if isinstance(c, torch.nn.Conv1d | torch.nn.Conv2d)
        ]
        rows.append(
            {
                "model": name,
                "variant": label,
                "conv widths": "/".join(map(str, sorted(set(convs)))),
                "macs_removed": 1 - count_macs(m, example) / full,
            }
        )
    timing = add_ratios(benchmark(variants, data.test[0].numpy().astype(np.float32)), "baseline")
    for row, t in zip(rows, timing):
        row["throughput_x"] = t["throughput_x"]
    return rows


@functools.cache
def _trained(name: str, seed: int) -> tuple[Any, torch.nn.Module]:
    spec = MODELS[name]
    data = data_for(spec, seed)
    return data, train(spec, data, seed)


def _accuracy(model: torch.nn.Module, data: Any) -> float:
    x, y = data.test
    with torch.no_grad():
        return float((model.eval()(x).argmax(1) == y).float().mean())


def _fit(
    model: torch.nn.Module, data: Any, epochs: int, lr: float, schedule: str, **kw: Any
) -> None:
    cfg = TrainConfig(
        epochs=epochs,
        progress=False,
        restore_best=False,
        optimizer=OptimizerConfig(name="adamw", lr=lr, weight_decay=kw.pop("weight_decay", 0.0)),
        schedule=ScheduleConfig(name=schedule),  # type: ignore[arg-type]
        label_smoothing=kw.pop("label_smoothing", 0.0),
    )
    Trainer(model, cfg, **kw).fit(data.loader("train", 64, True, torch.Generator().manual_seed(0)))


def schedule_effect(name: str, seeds: int) -> list[dict[str, Any]]:
    epochs = SETTINGS["prune"]["finetune"]["epochs"]
    ways = {
        "ramp to the last epoch, constant rate": (
            "constant",
            lambda: GradualPruner(0.9, 0, epochs - 1),
        ),
        "ramp over the first half, cosine rate": (
            "cosine",
            lambda: GradualPruner.for_epochs(0.9, epochs),
        ),
    }
    drops: dict[str, list[float]] = {way: [] for way in ways}
    for seed in range(seeds):
        data, model = _trained(name, seed)
        base = _accuracy(model, data)
        for way, (schedule, pruner) in ways.items():
            work = copy.deepcopy(model)
            _fit(
                work,
                data,
                epochs,
                SETTINGS["prune"]["finetune"]["lr"],
                schedule,
                callbacks=[pruner()],
                label_smoothing=SETTINGS["prune"]["finetune"]["label_smoothing"],
            )
            drops[way].append(100 * (base - _accuracy(make_permanent(work), data)))
    return [
        {
            "model": name,
            "90% pruning": way,
            "drop_points": statistics.mean(d),
            "drop_sd": statistics.stdev(d) if seeds > 1 else 0.0,
        }
        for way, d in drops.items()
    ]


def distill_yardstick(seeds: int) -> list[dict[str, Any]]:
    name, spec = "mnist1d_cnn", MODELS["mnist1d_cnn"]
    d = SETTINGS["distill"]
    acc: dict[tuple[float, str], list[float]] = {}
    teachers = []
    for seed in range(seeds):
        data, teacher = _trained(name, seed)
        teachers.append(_accuracy(teacher, data))
        kwargs = width_scaled(spec["model"][1], spec["model"][0], d["width"])
        for lr in (1e-3, 3e-3):
            for how in ("alone", "distilled"):
                torch.manual_seed(seed)
                student = create_model(
                    spec["model"][0], data.input_shape, data.num_classes, **kwargs
                )
                epochs = d["train"]["epochs"]
                if how == "alone":
                    _fit(student, data, epochs, lr, "cosine", weight_decay=1e-2)
                else:
                    distiller = Distiller(
                        student, copy.deepcopy(teacher), d["temperature"], d["alpha"]
                    )
                    _fit(
                        distiller,
                        data,
                        epochs,
                        lr,
                        "cosine",
                        weight_decay=1e-2,
                        step=DistillationStep(distiller),
                    )
                acc.setdefault((lr, how), []).append(_accuracy(student, data))
    teacher_acc = statistics.mean(teachers)
    rows = []
    for lr in (1e-3, 3e-3):
        alone, distilled = (
            statistics.mean(acc[(lr, "alone")]),
            statistics.mean(acc[(lr, "distilled")]),
        )
        gap = teacher_acc - alone
        rows.append(
            {
                "students' rate": lr,
                "teacher": teacher_acc,
                "alone": alone,
                "distilled": distilled,
                "gap_points": 100 * gap,
                "gap_closed": (distilled - alone) / gap if gap > 0 else float("nan"),
            }
        )
    return rows


def sparsity_cost(name: str, seeds: int, tmp: Path) -> list[dict[str, Any]]:
    targets = (0.9, 0.95)
    drops: dict[float, list[float]] = {t: [] for t in targets}
    ratios: dict[float, list[float]] = {t: [] for t in targets}
    for seed in range(seeds):
        data, model = _trained(name, seed)
        x, y = data.test
        onnx_bytes = export_onnx(model, x[:1], tmp / "base.onnx").stat().st_size
        with torch.no_grad():
            base = float((model(x).argmax(1) == y).float().mean())
        for target in targets:
            settings = {**copy.deepcopy(SETTINGS["deep_compression"]), "sparsity": target}
            loader = data.loader("train", 64, True, torch.Generator().manual_seed(0))
            cfg = from_dict(DeepCompressionConfig, settings)
            dc = deep_compression(copy.deepcopy(model), loader, None, tmp / f"{name}.dc", cfg)
            with torch.no_grad():
                acc = float((dc.model(x).argmax(1) == y).float().mean())
            drops[target].append(100 * (base - acc))
            ratios[target].append(onnx_bytes / dc.account["file_bytes"])
    return [
        {
            "model": name,
            "sparsity": t,
            "compression_x": statistics.mean(ratios[t]),
            "drop_points": statistics.mean(drops[t]),
            "drop_sd": statistics.stdev(drops[t]) if seeds > 1 else 0.0,
        }
        for t in targets
    ]


PARTS = ("widths", "deep_compression", "schedules", "distill")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument(
        "--only", nargs="*", choices=PARTS, default=list(PARTS), help="run only these ablations"
    )
    args = ap.parse_args()
    # A partial run updates its parts of the saved results and keeps the others.
    saved = RESULTS / "compress_ablations.json"
    out: dict[str, Any] = json.loads(saved.read_text()) if saved.exists() else {}
    out.pop("environment", None)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if "widths" in args.only:
            out["widths"] = [row for name in MODELS for row in widths(name, tmp)]
            print("\n## Channel widths and ONNX Runtime throughput (batch 64, 2 threads)\n")
            print(table(out["widths"]))
        if "deep_compression" in args.only:
            out["sparsity_cost"] = [
                row
                for name in ("digits_cnn", "mnist1d_cnn")
                for row in sparsity_cost(name, args.seeds, tmp)
            ]
            print(f"\n## Deep Compression at 90% and 95% sparsity ({args.seeds} seeds)\n")
            print(table(out["sparsity_cost"]))
    if "schedules" in args.only:
        small = ("digits_cnn", "mnist1d_cnn")
        out["schedules"] = [row for name in small for row in schedule_effect(name, args.seeds)]
        epochs = SETTINGS["prune"]["finetune"]["epochs"]
        print(f"\n## The gradual-pruning schedule, 90% over {epochs} epochs ({args.seeds} seeds)\n")
        print(table(out["schedules"]))
    if "distill" in args.only:
        out["distill_yardstick"] = distill_yardstick(args.seeds)
        print(f"\n## Distillation yardstick, MNIST-1D half-width student ({args.seeds} seeds)\n")
        print(table(out["distill_yardstick"]))
    save("compress_ablations", {**out, "seeds": args.seeds})


if __name__ == "__main__":
    main()
