"""The bench stage: eager PyTorch (fp32, and bf16 autocast where the CPU has it) against every
ONNX file the run exported, on the benchmark harness (``deploy/bench.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlforge.config import to_dict
from dlforge.deploy.config import BenchConfig
from dlforge.stages.base import RunContext, Stage, plain_copy

if TYPE_CHECKING:
    from torch import nn

    from dlforge.data import DataBundle


@dataclass
class BenchStageConfig(BenchConfig):
    enabled: bool = False


def bench_stage(
    model: nn.Module, data: DataBundle, cfg: BenchConfig, onnx_files: dict[str, Path]
) -> dict[str, Any]:
    """Benchmark eager fp32 (and bf16 autocast where the CPU has it) and the ONNX files."""
    import numpy as np
    import torch

    from dlforge.deploy.bench import (
        Variant,
        add_ratios,
        benchmark,
        engine_variants,
        pick_fastest,
        torch_runner,
    )
    from dlforge.train.precision import cpu_has_native_bf16

    model = plain_copy(model)
    x, y = data.test
    sample, labels = x.numpy().astype(np.float32), y.numpy()
    eager = {"backend": "pytorch", "precision": "fp32"}
    variants = [Variant("fp32 eager (PyTorch)", torch_runner(model), notes=eager)]
    if cpu_has_native_bf16():
        variants.append(Variant("bf16 autocast (PyTorch)", torch_runner(model, torch.bfloat16),
                                notes={**eager, "precision": "bf16"}))  # fmt: skip
    variants += engine_variants({k: Path(v) for k, v in onnx_files.items()}, cfg)
    for v in variants:
        logits = np.concatenate([v.run(sample[i : i + 256]) for i in range(0, len(sample), 256)])
        v.accuracy = float((logits.argmax(1) == labels).mean())
    rows = add_ratios(benchmark(variants, sample, cfg), variants[0].name)
    return {
        "rows": rows,
        "baseline": variants[0].name,
        "fastest": pick_fastest(rows, variants[0].accuracy, cfg.accuracy_tolerance),
        "config": {k: v for k, v in to_dict(cfg).items() if k != "enabled"},
    }


class BenchStage(Stage):
    name = "bench"
    title = "Benchmark"

    def run(self, ctx: RunContext) -> dict[str, Any]:
        return bench_stage(ctx.model, ctx.data, ctx.recipe.bench, ctx.onnx_files)

    def report(self, result: dict[str, Any], notes: list[str]) -> list[str]:
        from dlforge.report.sections import bench_section

        return bench_section(self.title, result, notes)

    def summary(self, result: dict[str, Any]) -> list[str]:
        from dlforge.report.tables import BENCH_COLUMNS, text_table

        lines = text_table(result["rows"], BENCH_COLUMNS)
        best = result.get("fastest")
        if best:
            lines.append(
                f"fastest within {best['tolerance']:.3g} accuracy of eager fp32: {best['variant']} "
                f"({best['throughput']:.0f}/s, {best['throughput_x']:.2f}x; accuracy "
                f"{best['accuracy']:.4f})"
            )
        return lines
