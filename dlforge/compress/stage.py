"""The compress stage: each chosen technique applied to the trained model, measured side by side.

Every variant starts from the same trained model and is scored the same way: test accuracy,
parameters, non-zero parameters, bytes on disk (the ONNX file, or the Deep Compression file)
and ONNX Runtime latency/throughput through the benchmark harness, beside the uncompressed
baseline. Unstructured sparsity keeps dense ONNX shapes, so its latency shows that it does not
speed up dense kernels.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from dlforge.compress.deep_compression import DeepCompressionConfig, deep_compression
from dlforge.compress.distill import Distiller, width_scaled
from dlforge.compress.lowrank import LowRankConfig, factorize
from dlforge.compress.prune import GradualPruner, make_permanent, sparsity
from dlforge.compress.structured import ChannelPrune, count_macs, prune_channels
from dlforge.config import Config, ConfigError, check
from dlforge.data import DataBundle
from dlforge.deploy.bench import BenchConfig, Variant, add_ratios, benchmark, ort_runner
from dlforge.deploy.export import export_onnx
from dlforge.deploy.stages import plain_copy

log = logging.getLogger("dlforge.compress")

Technique = Literal["prune", "structured", "lowrank", "deep_compression", "distill"]


@dataclass
class PruneStageConfig(Config):
    sparsity: float = 0.9
    epochs: int = 20  # gradual (cubic) pruning while fine-tuning
    prune_share: float = 0.5  # share of the epochs that raise sparsity; the rest recover
    lr: float | None = None  # None: the stage's fine-tuning rate

    def validate(self) -> None:
        check(0 <= self.sparsity < 1, "sparsity", self.sparsity, "must be in [0, 1)")
        check(0 < self.prune_share <= 1, "prune_share", self.prune_share, "must be in (0, 1]")
        check(self.epochs >= 1, "epochs", self.epochs, "must be >= 1")
        check(self.lr is None or self.lr > 0, "lr", self.lr, "must be positive")


@dataclass
class StructuredStageConfig(Config):
    amount: float = 0.5  # fraction of channels removed per prunable space (~3/4 of a conv's MACs)
    criterion: Literal["l1", "l2", "bn_scale"] = "l1"
    macs_removed: float | None = None  # or: remove this share of the MACs (overrides amount)
    round_to: int = 16  # keep a multiple of this many channels (ONNX Runtime's AVX-512 conv blocks)
    epochs: int = 10  # fine-tuning after surgery
    lr: float | None = None  # None: the stage's rate (a thinner net re-learns; 3e-3 served here)

    def validate(self) -> None:
        check(0 <= self.amount < 1, "amount", self.amount, "must be in [0, 1)")
        if self.macs_removed is not None:
            check(0 < self.macs_removed < 1, "macs_removed", self.macs_removed, "must be in (0, 1)")
        check(self.round_to >= 1, "round_to", self.round_to, "must be >= 1")
        check(self.epochs >= 0, "epochs", self.epochs, "must be >= 0")
        check(self.lr is None or self.lr > 0, "lr", self.lr, "must be positive")


@dataclass
class LowRankStageConfig(Config):
    ratio: float = 0.5
    epochs: int = 2  # fine-tuning after factorisation
    lr: float | None = None  # None: the stage's fine-tuning rate

    def validate(self) -> None:
        check(0 < self.ratio < 1, "ratio", self.ratio, "must be in (0, 1)")
        check(self.epochs >= 0, "epochs", self.epochs, "must be >= 0")
        check(self.lr is None or self.lr > 0, "lr", self.lr, "must be positive")


@dataclass
class DistillStageConfig(Config):
    width: float = 0.5  # student = the teacher's architecture at this width
    epochs: int = 30
    temperature: float = 4.0
    alpha: float = 0.9
    # The student learns from scratch, so it gets a from-scratch rate, not the fine-tuning one;
    # the student trained alone gets the same recipe (an under-trained yardstick flatters
    # distillation: at 1e-3 the MNIST-1D student alone fell 2.6 points short of the teacher,
    # at 3e-3 0.8; benchmarks/compress_ablations.py).
    lr: float = 3e-3
    weight_decay: float = 1e-2
    seed: int = 0  # the students' initialisation and batch order

    def validate(self) -> None:
        check(0 < self.width <= 1, "width", self.width, "must be in (0, 1]")
        check(0 <= self.alpha <= 1, "alpha", self.alpha, "must be in [0, 1]")
        check(self.temperature > 0, "temperature", self.temperature, "must be positive")
        check(self.epochs >= 1, "epochs", self.epochs, "must be >= 1")
        check(self.lr > 0, "lr", self.lr, "must be positive")


@dataclass
class CompressConfig(Config):
    enabled: bool = False
    techniques: list[Technique] = field(
        default_factory=lambda: ["prune", "lowrank", "deep_compression"]
    )
    lr: float = 1e-3
    # Fine-tuning decays the learning rate to zero (for gradual pruning, a constant rate with
    # the ramp to the last epoch measured the same: benchmarks/compress_ablations.py).
    schedule: Literal["constant", "cosine"] = "cosine"
    # Label smoothing while fine-tuning (not for students: the distiller's loss would bypass it
    # and favour the student trained alone); 0.1 helped the pruned small CNNs recover.
    label_smoothing: float = 0.0
    batch_size: int = 64
    prune: PruneStageConfig = field(default_factory=PruneStageConfig)
    structured: StructuredStageConfig = field(default_factory=StructuredStageConfig)
    lowrank: LowRankStageConfig = field(default_factory=LowRankStageConfig)
    deep_compression: DeepCompressionConfig = field(default_factory=DeepCompressionConfig)
    distill: DistillStageConfig = field(default_factory=DistillStageConfig)
    bench_rounds: int = 3

    def validate(self) -> None:
        check(self.lr > 0, "lr", self.lr, "must be positive")
        check(0 <= self.label_smoothing < 1, "label_smoothing", self.label_smoothing,
              "must be in [0, 1)")  # fmt: skip
        check(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        check(self.bench_rounds >= 1, "bench_rounds", self.bench_rounds, "must be >= 1")
        if len(set(self.techniques)) != len(self.techniques):
            raise ConfigError(f"lists a technique twice: {self.techniques}", "techniques")


def _train(
    model: nn.Module,
    data: DataBundle,
    epochs: int,
    cfg: CompressConfig,
    lr: float | None = None,  # None: the stage's fine-tuning rate
    weight_decay: float = 0.0,
    seed: int = 0,
    label_smoothing: float | None = None,  # None: the stage's
    **kw: Any,
) -> None:
    """AdamW on the training split with the stage's schedule."""
    from dlforge.train import OptimizerConfig, ScheduleConfig, TrainConfig, Trainer

    train = TrainConfig(
        epochs=epochs,
        progress=False,
        restore_best=False,
        optimizer=OptimizerConfig(
            name="adamw", lr=cfg.lr if lr is None else lr, weight_decay=weight_decay
        ),
        schedule=ScheduleConfig(name=cfg.schedule),
        label_smoothing=cfg.label_smoothing if label_smoothing is None else label_smoothing,
    )
    Trainer(model, train, **kw).fit(
        data.loader("train", cfg.batch_size, True, torch.Generator().manual_seed(seed))
    )


def _count(model: nn.Module) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(int((p != 0).sum()) for p in params)


def compress_stage(
    model: nn.Module,
    data: DataBundle,
    cfg: CompressConfig,
    out_dir: Path,
    model_name: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Apply each technique to a copy of ``model``; measure every variant and the baseline."""
    out_dir.mkdir(parents=True, exist_ok=True)
    example = data.test[0][:1]
    variants: dict[str, dict[str, Any]] = {"baseline": {"model": plain_copy(model)}}
    notes: dict[str, Any] = {}
    for technique in cfg.techniques:
        work = plain_copy(model)
        if technique == "prune":
            pruner = GradualPruner.for_epochs(
                cfg.prune.sparsity, cfg.prune.epochs, cfg.prune.prune_share
            )
            _train(work, data, cfg.prune.epochs, cfg, cfg.prune.lr, on_train_epoch_start=pruner)
            make_permanent(work)
            share = sparsity(work)
            notes["prune"] = {k: share[k] for k in ("global", "all_parameters", "left_out")}
            notes["prune"]["sparsity"] = share["global"]
            if share["left_out"]:
                log.warning(
                    "prune: %.1f%% of the conv/linear weights are zero but only %.1f%% of all "
                    "parameters; not pruned: %s",
                    100 * share["global"],
                    100 * share["all_parameters"],
                    ", ".join(share["left_out"]),
                )
        elif technique == "structured":
            plan = ChannelPrune(
                cfg.structured.amount,
                cfg.structured.criterion,
                cfg.structured.macs_removed,
                cfg.structured.round_to,
            )
            surgery = prune_channels(work, example, plan)
            if surgery.macs_removed <= 0:
                # Nothing was cut: a row of the same model would read as a result.
                notes["structured"] = {"skipped": "no channel could be removed",
                                       "pinned": surgery.pinned}  # fmt: skip
                log.warning("structured: nothing removed, no row reported (%s)", surgery.pinned)
                continue
            work = surgery.model
            if cfg.structured.epochs:
                _train(work, data, cfg.structured.epochs, cfg, cfg.structured.lr)
            notes["structured"] = {
                "kept": surgery.kept,
                "removed": surgery.removed,
                "pinned": surgery.pinned,
                "macs_removed": surgery.macs_removed,
                "macs_target": cfg.structured.macs_removed,
            }
        elif technique == "lowrank":
            # The first layer (few input channels) and the classifier (few outputs) gain little
            # and lose most from a rank cut, as is usual practice: factorise the layers between.
            names = [
                n
                for n, m in work.named_modules()
                if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d)
            ]
            inner = names[1:-1] or names
            result = factorize(
                work, LowRankConfig(mode="ratio", ratio=cfg.lowrank.ratio, layers=inner)
            )
            if cfg.lowrank.epochs:
                _train(work, data, cfg.lowrank.epochs, cfg, cfg.lowrank.lr)
            notes["lowrank"] = {
                "ranks": {k: list(v) for k, v in result.ranks.items()},
                "factorised_params_before": sum(result.params_before.values()),
                "factorised_params_after": sum(result.params_after.values()),
            }
        elif technique == "deep_compression":
            path = out_dir / "model.dc"
            dc = deep_compression(
                work,
                data.loader("train", cfg.batch_size, True, torch.Generator().manual_seed(0)),
                None,
                path,
                cfg.deep_compression,
            )
            work = dc.model
            notes["deep_compression"] = {
                "file": str(path),
                "sparsity": dc.sparsity,
                "account": dc.account,
            }
        elif technique == "distill":
            if model_name is None:
                raise ValueError("distill needs the registry name of the teacher's model")
            from dlforge.models import create_model

            d = cfg.distill
            kwargs = width_scaled(model_kwargs or {}, model_name, d.width)

            # Both students learn from scratch, without label smoothing: the distiller's loss
            # replaces the Trainer's cross-entropy, so smoothing would reach only the lone one.
            scratch = functools.partial(
                _train,
                data=data,
                epochs=d.epochs,
                cfg=cfg,
                lr=d.lr,
                weight_decay=d.weight_decay,
                seed=d.seed,
                label_smoothing=0.0,
            )
            torch.manual_seed(d.seed)  # the distilled student and the one trained alone start alike
            student = create_model(model_name, data.input_shape, data.num_classes, **kwargs)
            distiller = Distiller(student, plain_copy(model), d.temperature, d.alpha)
            scratch(distiller, loss_fn=distiller.loss)
            work = student
            notes["distill"] = {"student_kwargs": kwargs}
            # The same student trained alone on the labels: the yardstick for what distillation adds.
            torch.manual_seed(d.seed)
            alone = create_model(model_name, data.input_shape, data.num_classes, **kwargs)
            scratch(alone)
            variants["student_alone"] = {"model": plain_copy(alone)}
        variants[technique] = {"model": plain_copy(work)}
    measured = _measure(variants, notes, data, example, out_dir, cfg)
    acc = {r["variant"]: r["accuracy"] for r in measured["rows"]}
    if "distill" in acc and "student_alone" in acc:
        gap = acc["baseline"] - acc["student_alone"]
        closed = (acc["distill"] - acc["student_alone"]) / gap if gap > 0 else float("nan")
        measured["notes"]["distill"]["gap_closed"] = closed  # share of the teacher-student gap
        measured["notes"]["distill"]["gap_points"] = 100 * gap
    return measured


def _measure(
    variants: dict[str, dict[str, Any]],
    notes: dict[str, Any],
    data: DataBundle,
    example: torch.Tensor,
    out_dir: Path,
    cfg: CompressConfig,
) -> dict[str, Any]:
    x, y = data.test
    rows: list[dict[str, Any]] = []
    bench_variants: list[Variant] = []
    for name, v in variants.items():
        model = v["model"]
        with torch.no_grad():
            acc = float((model(x).argmax(1) == y).float().mean())
        path = export_onnx(model, example, out_dir / f"{name}.onnx")
        total, nonzero = _count(model)
        macs = count_macs(model, example)
        stored = notes.get(name, {}).get("account", {}).get("file_bytes")
        rows.append(
            {
                "variant": name,
                "accuracy": acc,
                "params": total,
                "nonzero_params": nonzero,
                "macs": macs,
                "onnx_bytes": path.stat().st_size,
                "stored_bytes": stored if stored is not None else path.stat().st_size,
            }
        )
        bench_variants.append(Variant(name, ort_runner(path, 2), file=path, accuracy=acc))
    timing = add_ratios(
        benchmark(
            bench_variants, x.numpy().astype(np.float32), BenchConfig(rounds=cfg.bench_rounds)
        ),
        "baseline",
    )
    base = rows[0]
    for row, t in zip(rows, timing):
        row.update(
            {
                "accuracy_drop_points": 100 * (base["accuracy"] - row["accuracy"]),
                "compression_x": base["stored_bytes"] / row["stored_bytes"],
                "latency_p50_ms": t["latency_p50_ms"],
                "throughput_b64": t["throughput_b64"],
                "throughput_x": t["throughput_x"],
            }
        )
    return {"rows": rows, "notes": notes, "config": {"techniques": cfg.techniques}}
