"""The main job: recipe → data → model → train → the stage registry (evaluate, crossval, ensemble,
compress, quantize, bench) → report.

No technique lives here: training goes through ``stages/train.py`` and every later stage is an
entry of ``stages.STAGES``; each adds its part to one result dict, written as ``metrics.json``
(atomically) that the report reads.

Failures keep what was done: bad input (recipe, data, model) fails before anything is written,
so no run folder is left behind; a stage that fails later records its error under its own name
in ``metrics.json`` and the report, every earlier stage's results stay, and a ``StageError``
names the stage and the cause.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlforge.checkpoints import (
    CHECKPOINT_FORMAT,
    checkpoint_meta,
    checkpoint_recipe,
    load_checkpoint,
)
from dlforge.config import DlforgeError
from dlforge.data import DataBundle, load_data
from dlforge.environment import environment
from dlforge.evaluate import evaluate_model
from dlforge.recipe import Recipe, load_recipe, recipe_from_dict
from dlforge.report import write_report
from dlforge.stages import STAGES, RunContext
from dlforge.stages.bench import bench_stage
from dlforge.stages.compress import adversarial_step, compress_stage
from dlforge.stages.crossval import cross_validate
from dlforge.stages.quantize import quantize_stage
from dlforge.stages.robust import compare_probe
from dlforge.stages.train import make_model, make_trainer, train_with
from dlforge.train import Trainer, atomic_write_json, atomic_write_text, seed_everything
from dlforge.train.checkpoint import remove_stray_temps
from dlforge.train.runtime import Runtime
from dlforge.train.trainer import state_path

log = logging.getLogger("dlforge")

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointContext",
    "RunResult",
    "StageError",
    "bench_checkpoint",
    "compress_checkpoint",
    "cross_validate_recipe",
    "evaluate_checkpoint",
    "load_checkpoint",
    "open_checkpoint",
    "quantize_checkpoint",
    "run",
    "train",
    "train_stage",
]


class StageError(DlforgeError):
    """A stage failed after the run started; what earlier stages wrote is kept."""

    def __init__(self, stage: str, cause: BaseException, where: Path | None = None) -> None:
        self.stage, self.cause = stage, cause
        kept = f" (earlier results kept in {where})" if where is not None else ""
        super().__init__(f"stage '{stage}' failed: {_describe(cause)}{kept}")


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())  # one line, whatever the library put in its message
    return text if isinstance(exc, DlforgeError) else f"{type(exc).__name__}: {text}"


def stage_failure(exc: BaseException) -> dict[str, Any]:
    """What ``metrics.json`` and the report show for a failed stage."""
    return {"error": {"type": type(exc).__name__, "message": " ".join(str(exc).split())}}


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    model: nn.Module
    data: DataBundle
    main: bool = True  # False in the other processes of a distributed run (they only train)

    @property
    def report_path(self) -> Path:
        return self.run_dir / "report.html"


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def prepare(recipe: Recipe) -> tuple[DataBundle, nn.Module]:
    """Data and model: everything bad input can break, done before any file is written."""
    seed_everything(recipe.seed)
    data = load_data(recipe.data, recipe.seed)
    model = make_model(recipe, data)
    rng = torch.get_rng_state()  # the checks must not move the numbers training draws
    for stage in STAGES:  # a technique that cannot handle the model says so now
        if stage.enabled(recipe):
            stage.preflight(recipe, data, model)
    torch.set_rng_state(rng)
    return data, model


def train_stage(
    recipe: Recipe,
    run_dir: Path,
    data: DataBundle,
    model: nn.Module,
    resume: bool = False,
    runtime: Runtime | None = None,
) -> tuple[Trainer, dict[str, Any]]:
    """Train ``model``; returns the trainer (its model holds the best weights) and the result so
    far. A failure inside training raises ``_TrainFailed`` carrying the partial result."""
    trainer = make_trainer(
        recipe, data, model, out_dir=run_dir, meta=checkpoint_meta(recipe, data, model),
        runtime=runtime,
    )  # fmt: skip
    try:
        train_with(trainer, recipe, data, resume=_resume_point(run_dir) if resume else None)
    except Exception as exc:
        partial = _train_result(recipe, data, trainer)
        raise _TrainFailed(partial | {"train": _train_failure(trainer, exc)}, exc) from exc
    return trainer, _train_result(recipe, data, trainer)


class _TrainFailed(Exception):
    """Carries the partial result of a failed training to ``run``/``train``."""

    def __init__(self, result: dict[str, Any], cause: Exception) -> None:
        super().__init__(str(cause))
        self.result, self.cause = result, cause


def _train_failure(trainer: Trainer, exc: BaseException) -> dict[str, Any]:
    return trainer.history.to_dict() | stage_failure(exc)


def _resume_point(run_dir: Path) -> Path | None:
    last = run_dir / "checkpoints" / "last.safetensors"
    if state_path(last).exists():
        return last
    # A run killed before its first checkpoint has nothing to resume: it starts over.
    log.warning("nothing to resume in %s: starting from scratch", last.parent)
    return None


def _train_result(recipe: Recipe, data: DataBundle, trainer: Trainer) -> dict[str, Any]:
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "recipe": recipe.to_dict(),
        "data": {"source": recipe.data.source, **data.summary()},
        "model": {
            "name": recipe.model.name,
            "parameters": count_parameters(trainer.model),
            "checkpoint": str(trainer.checkpoint_path("best")),
        },
        "train": trainer.history.to_dict() | trainer.notes,
        "environment": environment(),
    }


def _stage(timings: dict[str, float], name: str, start: float) -> float:
    now = time.perf_counter()
    timings[name] = round(now - start, 3)
    return now


def _open_run_dir(recipe: Recipe, main: bool = True) -> Path:
    run_dir = Path(recipe.output_dir) / recipe.name
    if not main:  # another process of a distributed run writes the folder
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    for p in remove_stray_temps(run_dir):
        log.info("removed %s, left by an interrupted write", p)
    atomic_write_text(run_dir / "recipe.yaml", recipe.to_yaml())
    return run_dir


def _write_results(run_dir: Path, result: dict[str, Any], report: bool) -> None:
    atomic_write_json(run_dir / "metrics.json", result)
    if report:
        write_report(run_dir)


def run(recipe: Recipe, resume: bool = False) -> RunResult:
    """Run every stage the recipe asks for and write the run folder.

    Under ``torchrun`` every process trains its shard; the first one then runs the later stages
    and writes the results, the others stop after training."""
    start = t = time.perf_counter()
    timings: dict[str, float] = {}
    data, model = prepare(recipe)  # bad input fails here, before the run folder exists
    t = _stage(timings, "data", t)
    runtime = Runtime.from_env(recipe.train.device)
    run_dir = _open_run_dir(recipe, runtime.is_main)
    try:
        trainer, result = train_stage(recipe, run_dir, data, model, resume, runtime)
        _stage(timings, "train", t)
    except _TrainFailed as failed:
        if runtime.is_main:
            _write_results(run_dir, failed.result, recipe.report.enabled)
        raise StageError("train", failed.cause, run_dir / "metrics.json") from failed.cause
    finally:
        runtime.close()  # the later stages run in the first process alone
    if not runtime.is_main:
        return RunResult(run_dir, result, trainer.model, data, main=False)
    ctx = RunContext(recipe, run_dir, data, trainer.model, results=result)
    failure = run_stages(ctx, timings)
    timings["total"] = round(time.perf_counter() - start, 3)
    result["timings"] = timings
    _write_results(run_dir, result, recipe.report.enabled)
    if failure is not None:
        raise failure
    return RunResult(run_dir=run_dir, metrics=result, model=trainer.model, data=data)


def run_stages(ctx: RunContext, timings: dict[str, float]) -> StageError | None:
    """Every enabled stage after training, in order, each result under the stage's name in
    ``ctx.results``; the first failure is recorded there and stops the run (returned)."""
    for stage in STAGES:
        if not stage.enabled(ctx.recipe):
            continue
        t = time.perf_counter()
        try:
            ctx.results[stage.name] = stage.run(ctx)
        except Exception as exc:
            log.debug("stage %s failed", stage.name, exc_info=True)
            ctx.results[stage.name] = stage_failure(exc)
            failure = StageError(stage.name, exc, ctx.run_dir / "metrics.json")
            failure.__cause__ = exc
            return failure
        finally:
            _stage(timings, stage.name, t)
    return None


def train(recipe: Recipe, resume: bool = False) -> dict[str, Any]:
    """Data and training only (``dlforge train``); returns what it wrote to ``metrics.json``.

    Sections of later stages (evaluate, compress, ...) already in ``metrics.json`` are kept when
    the weights they describe did not change (``--resume`` on a finished run); when training
    went on, they no longer describe the model and are dropped.
    """
    t = time.perf_counter()
    timings: dict[str, float] = {}
    data, model = prepare(recipe)
    t = _stage(timings, "data", t)
    runtime = Runtime.from_env(recipe.train.device)
    run_dir = _open_run_dir(recipe, runtime.is_main)
    try:
        trainer, result = train_stage(recipe, run_dir, data, model, resume, runtime)
    except _TrainFailed as failed:
        if runtime.is_main:
            _write_results(run_dir, failed.result, False)
        raise StageError("train", failed.cause, run_dir / "metrics.json") from failed.cause
    finally:
        runtime.close()
    _stage(timings, "train", t)
    result["timings"] = timings
    if not runtime.is_main:
        return result | {"main": False}
    metrics_path = run_dir / "metrics.json"
    if resume and trainer.steps_this_fit == 0 and metrics_path.exists():
        try:
            before = json.loads(metrics_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            before = {}
        result = before | {k: v for k, v in result.items() if k not in ("timings", "created")}
    atomic_write_json(metrics_path, result)
    if (run_dir / "report.html").exists():
        write_report(run_dir)
    return result


def cross_validate_recipe(recipe: Recipe) -> dict[str, Any]:
    """``dlforge cv``: k-fold cross-validation of the recipe; the result joins the run folder's
    ``metrics.json`` (created if there is none) under ``crossval`` and its report."""
    start = time.perf_counter()
    result = cross_validate(recipe)  # reads the data first: bad input leaves no folder
    run_dir = Path(recipe.output_dir) / recipe.name
    # Its own recipe beside its results: the run's recipe.yaml describes the run's checkpoints.
    atomic_write_text(run_dir / "crossval" / "recipe.yaml", recipe.to_yaml())
    metrics_path = run_dir / "metrics.json"
    metrics: dict[str, Any] = {}
    if metrics_path.exists():
        try:
            metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            metrics = {}
    metrics.setdefault("created", datetime.now(UTC).isoformat(timespec="seconds"))
    metrics.setdefault("recipe", recipe.to_dict())
    metrics.setdefault("environment", environment())
    single = metrics.get("evaluate", {}).get("summary", {})
    result["single_split"] = {k: single[k] for k in ("accuracy", "f1_macro") if k in single}
    result["seconds"] = round(time.perf_counter() - start, 3)
    metrics["crossval"] = result
    _write_results(run_dir, metrics, recipe.report.enabled)
    return result


# --- commands on a checkpoint ------------------------------------------------------------


@dataclass
class CheckpointContext:
    """A checkpoint rebuilt for a command: its model, its recipe (with the command's overrides)
    and its data, normalised with the statistics stored at training time."""

    model: nn.Module
    recipe: Recipe
    data: DataBundle


def open_checkpoint(
    path: str | Path,
    overrides: list[str] | None = None,
    trust_code: bool = False,
    data_path: str | None = None,
    compress_recipe: str | None = None,
) -> CheckpointContext:
    """The one way ``evaluate``/``quantize``/``compress``/``bench`` rebuild a checkpoint: the
    model (registered factories only, unless ``trust_code``), the recipe, and the data (from
    ``data_path`` if given), checked to fit the model."""
    model, meta = load_checkpoint(path, trust_code)
    recipe = checkpoint_recipe(path, meta)
    if compress_recipe is not None:  # another recipe's compress section on this checkpoint
        recipe.compress = load_recipe(compress_recipe).compress
    if overrides:
        recipe = recipe_from_dict(recipe.to_dict(), overrides)
    if data_path is not None:
        recipe.data.path = data_path
    # Normalise with the statistics stored at training time, not ones refitted on this data.
    data = load_data(recipe.data, recipe.seed, normalizer=meta.preprocessing.get("normalize"))
    if list(data.input_shape) != meta.model.input_shape:
        raise DlforgeError(
            f"checkpoint {path} expects inputs {meta.model.input_shape}, "
            f"the data has {list(data.input_shape)}"
        )
    if data.num_classes != meta.model.num_classes:
        raise DlforgeError(
            f"checkpoint {path} has {meta.model.num_classes} classes, "
            f"the data has {data.num_classes}"
        )
    return CheckpointContext(model, recipe, data)


def evaluate_checkpoint(
    path: str | Path,
    split: str = "test",
    data_path: str | None = None,
    trust_code: bool = False,
) -> dict[str, Any]:
    """Evaluate a checkpoint on the data its recipe names (or the same source at ``data_path``)."""
    ck = open_checkpoint(path, [f"evaluate.split={split}"], trust_code, data_path)
    result = evaluate_model(
        ck.model,
        ck.data.loader(split, ck.recipe.evaluate.batch_size),
        ck.data.class_names,
        ck.recipe.evaluate,
        seed=ck.recipe.seed,
    )
    result["checkpoint"] = str(path)
    return result


def _run_dir_of(checkpoint: str | Path) -> Path:
    return Path(checkpoint).resolve().parent.parent


def compress_dir(checkpoint: str | Path) -> Path:
    """Where ``dlforge compress`` writes for a checkpoint: its run folder's ``compress/``."""
    return _run_dir_of(checkpoint) / "compress"


def robust_path(checkpoint: str | Path) -> Path:
    """Where ``dlforge attack`` writes for a checkpoint: its run folder's ``robust.json``."""
    return _run_dir_of(checkpoint) / "robust.json"


def _guarded(
    stage: str, checkpoint: str | Path, work: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Run one stage on a checkpoint; on failure record it in the run folder, then raise."""
    try:
        return work()
    except Exception as exc:
        _merge_into_run(checkpoint, {stage: stage_failure(exc)})
        raise StageError(stage, exc) from exc


def quantize_checkpoint(
    path: str | Path,
    overrides: list[str],
    out: str | None = None,
    bench: bool = False,
    trust_code: bool = False,
) -> dict[str, Any]:
    """PTQ (and optionally benchmark) a checkpoint with its own data; writes quantize.json."""
    ck = open_checkpoint(path, ["quantize.enabled=true", *overrides], trust_code)
    model, recipe, data = ck.model, ck.recipe, ck.data
    out_dir = Path(out) if out else _run_dir_of(path) / "deploy"
    result: dict[str, Any] = {"checkpoint": str(path)}
    result["quantize"] = _guarded(
        "quantize",
        path,
        lambda: quantize_stage(model, data, recipe.quantize, out_dir, compare_probe(recipe, data)),
    )
    if bench:
        files = {k: Path(v) for k, v in result["quantize"]["files"].items()}
        result["bench"] = _guarded(
            "bench", path, lambda: bench_stage(model, data, recipe.bench, files)
        )
    atomic_write_json(out_dir / "quantize.json", result)
    _merge_into_run(path, {k: v for k, v in result.items() if k in ("quantize", "bench")})
    return result


def bench_checkpoint(
    path: str | Path,
    onnx_files: list[str] | None,
    overrides: list[str],
    trust_code: bool = False,
) -> dict[str, Any]:
    """Benchmark a checkpoint's eager model against ONNX files (default: the run's deploy/)."""
    from dlforge.deploy.runtime import check_onnx_file

    if onnx_files is None:
        onnx_files = sorted(str(p) for p in (_run_dir_of(path) / "deploy").glob("*.onnx"))
    for f in onnx_files:
        check_onnx_file(f)
    ck = open_checkpoint(path, ["bench.enabled=true", *overrides], trust_code)
    model, recipe, data = ck.model, ck.recipe, ck.data
    files = {Path(f).stem: Path(f) for f in onnx_files}
    result = _guarded("bench", path, lambda: bench_stage(model, data, recipe.bench, files))
    _merge_into_run(path, {"bench": result})
    return result


def _merge_into_run(checkpoint: str | Path, parts: dict[str, Any]) -> None:
    """When the checkpoint sits in a run folder, add ``parts`` to its metrics and report."""
    run_dir = _run_dir_of(checkpoint)
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.exists():
        return
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        log.warning("%s is unreadable: results not merged into it", metrics_path)
        return
    if not isinstance(metrics, dict):
        return
    metrics.update(parts)
    atomic_write_json(metrics_path, metrics)
    if (run_dir / "report.html").exists():
        write_report(run_dir)


def compress_checkpoint(
    path: str | Path, recipe_path: str | None, overrides: list[str], trust_code: bool = False
) -> dict[str, Any]:
    """Run the compress stage of ``recipe_path`` (or the checkpoint's own recipe) on a checkpoint."""
    ck = open_checkpoint(
        path, ["compress.enabled=true", *overrides], trust_code, compress_recipe=recipe_path
    )
    model, recipe, data = ck.model, ck.recipe, ck.data
    out_dir = compress_dir(path)
    result = _guarded(
        "compress",
        path,
        lambda: compress_stage(
            model,
            data,
            recipe.compress,
            out_dir,
            recipe.model.name,
            recipe.model.kwargs,
            compare_probe(recipe, data),
            adversarial_step(recipe, data),
        ),
    )
    atomic_write_json(out_dir / "compress.json", result)
    _merge_into_run(path, {"compress": result})
    return result


def attack_checkpoint(
    path: str | Path, overrides: list[str], out: str | None = None, trust_code: bool = False
) -> dict[str, Any]:
    """The robust stage on a checkpoint (attacks, corruptions, sanity checks) with its own data;
    writes ``robust.json`` into the run folder (or ``out``) and merges into its report."""
    ck = open_checkpoint(path, ["robust.enabled=true", *overrides], trust_code)
    from dlforge.robust.suite import robustness_report

    cfg, seed = ck.recipe.robust, ck.recipe.seed
    result = _guarded("robust", path, lambda: robustness_report(ck.model, ck.data, cfg, seed))
    result["checkpoint"] = str(path)
    atomic_write_json(Path(out) if out else robust_path(path), result)
    _merge_into_run(path, {"robust": result})
    return result
