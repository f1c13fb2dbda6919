"""The main job: recipe → data → model → train → evaluate → report, into one run folder.

No technique lives here; each stage calls the package that owns it and adds its part to one
result dict, written as ``metrics.json`` (atomically) that the report reads.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlforge.compress.stage import compress_stage
from dlforge.data import DataBundle, load_data
from dlforge.deploy.stages import bench_stage, quantize_stage
from dlforge.environment import environment
from dlforge.evaluate import evaluate_model
from dlforge.models import create_model
from dlforge.recipe import Recipe, load_recipe, recipe_from_dict
from dlforge.report import write_report
from dlforge.train import (
    CheckpointError,
    Trainer,
    atomic_write_json,
    atomic_write_text,
    load_weights,
    read_meta,
    seed_everything,
)

log = logging.getLogger("dlforge")
CHECKPOINT_FORMAT = "dlforge-checkpoint/1"


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    model: nn.Module
    data: DataBundle

    @property
    def report_path(self) -> Path:
        return self.run_dir / "report.html"


def checkpoint_meta(recipe: Recipe, data: DataBundle, model: nn.Module) -> dict[str, Any]:
    """What a checkpoint needs to rebuild its model and data without the recipe file."""
    return {
        "format": CHECKPOINT_FORMAT,
        "model": {
            "name": recipe.model.name,
            "kwargs": recipe.model.kwargs,
            "input_shape": list(data.input_shape),
            "num_classes": data.num_classes,
            "parameters": count_parameters(model),
        },
        "class_names": data.class_names,
        "preprocessing": data.preprocessing,
        "recipe": recipe.to_dict(),
        "environment": environment(),
    }


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _stage(timings: dict[str, float], name: str, start: float) -> float:
    now = time.perf_counter()
    timings[name] = round(now - start, 3)
    return now


def train_stage(
    recipe: Recipe, run_dir: Path, resume: bool = False
) -> tuple[nn.Module, DataBundle, dict[str, Any], dict[str, float]]:
    """Data, model and training; returns the trained model (best weights) and the result so far."""
    timings: dict[str, float] = {}
    t = time.perf_counter()
    seed_everything(recipe.seed)
    data = load_data(recipe.data, recipe.seed)
    t = _stage(timings, "data", t)
    model = create_model(
        recipe.model.name, data.input_shape, data.num_classes, **recipe.model.kwargs
    )
    meta = checkpoint_meta(recipe, data, model)
    trainer = Trainer(model, recipe.train, out_dir=run_dir, meta=meta)
    generator = torch.Generator().manual_seed(recipe.seed)
    resume_from = None
    if resume:
        resume_from = trainer.checkpoint_path("last")
        if resume_from is None or not resume_from.exists():
            raise CheckpointError(f"--resume: no checkpoint to resume from at {resume_from}")
    history = trainer.fit(
        data.loader("train", recipe.train.batch_size, shuffle=True, generator=generator),
        data.loader("val", recipe.evaluate.batch_size),
        resume=resume_from,
    )
    _stage(timings, "train", t)
    result = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "recipe": recipe.to_dict(),
        "data": {"source": recipe.data.source, **data.summary()},
        "model": {
            "name": recipe.model.name,
            "parameters": count_parameters(model),
            "checkpoint": str(trainer.checkpoint_path("best")),
        },
        "train": history.to_dict(),
        "environment": environment(),
    }
    return trainer.model, data, result, timings


def run(recipe: Recipe, resume: bool = False) -> RunResult:
    """Run every stage the recipe asks for and write the run folder."""
    run_dir = Path(recipe.output_dir) / recipe.name
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "recipe.yaml", recipe.to_yaml())
    start = time.perf_counter()
    model, data, result, timings = train_stage(recipe, run_dir, resume)
    t = time.perf_counter()
    result["evaluate"] = evaluate_model(
        model,
        data.loader(recipe.evaluate.split, recipe.evaluate.batch_size),
        data.class_names,
        recipe.evaluate,
        device=next(model.parameters()).device,
        seed=recipe.seed,
    )
    t = _stage(timings, "evaluate", t)
    deploy_dir = run_dir / "deploy"
    if recipe.compress.enabled:
        result["compress"] = compress_stage(
            model,
            data,
            recipe.compress,
            run_dir / "compress",
            recipe.model.name,
            recipe.model.kwargs,
        )
        t = _stage(timings, "compress", t)
    if recipe.quantize.enabled:
        result["quantize"] = quantize_stage(model, data, recipe.quantize, deploy_dir)
        t = _stage(timings, "quantize", t)
    if recipe.bench.enabled:
        files = result["quantize"]["files"] if "quantize" in result else {}
        result["bench"] = bench_stage(model, data, recipe.bench, files)
        t = _stage(timings, "bench", t)
    timings["total"] = round(time.perf_counter() - start, 3)
    result["timings"] = timings
    atomic_write_json(run_dir / "metrics.json", result)
    if recipe.report.enabled:
        write_report(run_dir)
        timings["report"] = round(time.perf_counter() - t, 3)
        atomic_write_json(run_dir / "metrics.json", result)
    return RunResult(run_dir=run_dir, metrics=result, model=model, data=data)


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from a checkpoint's own metadata and load its weights."""
    meta = read_meta(path)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path}: unknown format {meta.get('format')!r}")
    m = meta["model"]
    model = create_model(m["name"], m["input_shape"], m["num_classes"], **m["kwargs"])
    load_weights(path, model)
    return model.eval(), meta


def evaluate_checkpoint(
    path: str | Path, split: str = "test", data_path: str | None = None
) -> dict[str, Any]:
    """Evaluate a checkpoint on the data its recipe names (or the same source at ``data_path``)."""
    model, meta = load_checkpoint(path)
    recipe = recipe_from_dict(meta["recipe"])
    if data_path is not None:
        recipe.data.path = data_path
    # Normalise with the statistics stored at training time, not ones refitted on this data.
    data = load_data(recipe.data, recipe.seed, normalizer=meta["preprocessing"].get("normalize"))
    if list(data.input_shape) != meta["model"]["input_shape"]:
        raise CheckpointError(
            f"checkpoint {path} expects inputs {meta['model']['input_shape']}, "
            f"the data has {list(data.input_shape)}"
        )
    recipe.evaluate.split = split
    result = evaluate_model(
        model,
        data.loader(split, recipe.evaluate.batch_size),
        data.class_names,
        recipe.evaluate,
        seed=recipe.seed,
    )
    result["checkpoint"] = str(path)
    return result


def quantize_checkpoint(
    path: str | Path, overrides: list[str], out: str | None = None, bench: bool = False
) -> dict[str, Any]:
    """PTQ (and optionally benchmark) a checkpoint with its own data; writes quantize.json."""
    model, meta = load_checkpoint(path)
    recipe = recipe_from_dict(meta["recipe"], ["quantize.enabled=true", *overrides])
    data = load_data(recipe.data, recipe.seed, normalizer=meta["preprocessing"].get("normalize"))
    out_dir = Path(out) if out else Path(path).resolve().parent.parent / "deploy"
    result: dict[str, Any] = {"checkpoint": str(path)}
    result["quantize"] = quantize_stage(model, data, recipe.quantize, out_dir)
    if bench:
        result["bench"] = bench_stage(model, data, recipe.bench, result["quantize"]["files"])
    atomic_write_json(out_dir / "quantize.json", result)
    _merge_into_run(path, {k: v for k, v in result.items() if k in ("quantize", "bench")})
    return result


def bench_checkpoint(
    path: str | Path, onnx_files: list[str] | None, overrides: list[str]
) -> dict[str, Any]:
    """Benchmark a checkpoint's eager model against ONNX files (default: the run's deploy/)."""
    model, meta = load_checkpoint(path)
    recipe = recipe_from_dict(meta["recipe"], ["bench.enabled=true", *overrides])
    data = load_data(recipe.data, recipe.seed, normalizer=meta["preprocessing"].get("normalize"))
    if onnx_files is None:
        onnx_files = sorted(
            str(p) for p in (Path(path).resolve().parent.parent / "deploy").glob("*.onnx")
        )
    missing = [f for f in onnx_files if not Path(f).exists()]
    if missing:
        raise FileNotFoundError(f"ONNX files not found: {missing}")
    files = {Path(f).stem: f for f in onnx_files}
    result = bench_stage(model, data, recipe.bench, files)
    _merge_into_run(path, {"bench": result})
    return result


def _merge_into_run(checkpoint: str | Path, parts: dict[str, Any]) -> None:
    """When the checkpoint sits in a run folder, add ``parts`` to its metrics and report."""
    run_dir = Path(checkpoint).resolve().parent.parent
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.exists():
        return
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    metrics.update(parts)
    atomic_write_json(metrics_path, metrics)
    if (run_dir / "report.html").exists():
        write_report(run_dir)


def compress_checkpoint(
    path: str | Path, recipe_path: str | None, overrides: list[str]
) -> dict[str, Any]:
    """Run the compress stage of ``recipe_path`` (or the checkpoint's own recipe) on a checkpoint."""
    model, meta = load_checkpoint(path)
    base = recipe_from_dict(meta["recipe"])
    if recipe_path is not None:
        section = load_recipe(recipe_path).compress
        base.compress = section
    recipe = recipe_from_dict(base.to_dict(), ["compress.enabled=true", *overrides])
    data = load_data(recipe.data, recipe.seed, normalizer=meta["preprocessing"].get("normalize"))
    out_dir = Path(path).resolve().parent.parent / "compress"
    result = compress_stage(
        model, data, recipe.compress, out_dir, recipe.model.name, recipe.model.kwargs
    )
    atomic_write_json(out_dir / "compress.json", result)
    _merge_into_run(path, {"compress": result})
    return result
