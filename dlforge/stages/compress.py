"""The compress stage: each chosen technique applied to the trained model, measured side by side.

Every variant starts from the same trained model and is scored the same way: test accuracy,
parameters, non-zero parameters, MACs, bytes on disk (the ONNX file, or the Deep Compression
file) and ONNX Runtime latency/throughput through the benchmark harness, beside the uncompressed
baseline. Unstructured sparsity keeps dense ONNX shapes, so its latency shows that it does not
speed up dense kernels. A technique is a function in ``TECHNIQUES``; adding one adds an entry.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from dlforge.compress.config import ChannelPrune, DeepCompressionConfig
from dlforge.config import Config, ConfigError, check
from dlforge.stages.base import RunContext, Stage, plain_copy
from dlforge.train.config import FineTune

if TYPE_CHECKING:
    from torch import nn

    from dlforge.data import DataBundle

log = logging.getLogger("dlforge.compress")

Technique = Literal["prune", "structured", "lowrank", "deep_compression", "distill"]


@dataclass
class PruneStageConfig(Config):
    sparsity: float = 0.9
    prune_share: float = 0.5  # share of the epochs that raise sparsity; the rest recover
    finetune: FineTune = field(default_factory=lambda: FineTune(epochs=20))

    MOVED: ClassVar[dict[str, str]] = {"epochs": "finetune.epochs", "lr": "finetune.lr"}

    def validate(self) -> None:
        check(0 <= self.sparsity < 1, "sparsity", self.sparsity, "must be in [0, 1)")
        check(0 < self.prune_share <= 1, "prune_share", self.prune_share, "must be in (0, 1]")
        check(self.finetune.epochs >= 1, "finetune.epochs", self.finetune.epochs, "must be >= 1")


@dataclass
class StructuredStageConfig(Config):
    amount: float = 0.5  # fraction of channels removed per prunable space (~3/4 of a conv's MACs)
    criterion: Literal["l1", "l2", "bn_scale"] = "l1"
    macs_removed: float | None = None  # or: remove this share of the MACs (overrides amount)
    round_to: int = 16  # keep a multiple of this many channels (ONNX Runtime's AVX-512 conv blocks)
    heads: float = 0.0  # share of each attention module's heads removed (Michel et al. ranking)
    importance_batches: int = 8  # training batches the head importance is measured on
    # A thinner net re-learns after surgery (3e-3 served the benchmarks' CNNs).
    finetune: FineTune = field(default_factory=lambda: FineTune(epochs=10))

    MOVED: ClassVar[dict[str, str]] = {"epochs": "finetune.epochs", "lr": "finetune.lr"}

    def validate(self) -> None:
        self.plan()  # the same rules (and messages) as ChannelPrune built in Python

    def plan(self, skip_unsupported: bool = False) -> ChannelPrune:
        return ChannelPrune(self.amount, self.criterion, self.macs_removed, self.round_to,
                            self.heads, skip_unsupported)  # fmt: skip


@dataclass
class LowRankStageConfig(Config):
    ratio: float = 0.5
    finetune: FineTune = field(default_factory=lambda: FineTune(epochs=2))

    MOVED: ClassVar[dict[str, str]] = {"epochs": "finetune.epochs", "lr": "finetune.lr"}

    def validate(self) -> None:
        check(0 < self.ratio < 1, "ratio", self.ratio, "must be in (0, 1)")


@dataclass
class DistillStageConfig(Config):
    width: float = 0.5  # student = the teacher's architecture at this width
    depth: int | None = None  # and, for transformer/vit/rnn, this many layers
    temperature: float = 4.0
    alpha: float = 0.9
    # The student learns from scratch, so it gets a from-scratch recipe, and the student trained
    # alone gets the same one (an under-trained yardstick flatters distillation: at 1e-3 the
    # MNIST-1D student alone fell 2.6 points short of the teacher, at 3e-3 0.8;
    # benchmarks/compress_ablations.py).
    train: FineTune = field(default_factory=lambda: FineTune(epochs=30, lr=3e-3, weight_decay=1e-2))

    MOVED: ClassVar[dict[str, str]] = {
        "epochs": "train.epochs",
        "lr": "train.lr",
        "weight_decay": "train.weight_decay",
        "seed": "train.seed",
    }

    def validate(self) -> None:
        check(0 < self.width <= 1, "width", self.width, "must be in (0, 1]")
        check(0 <= self.alpha <= 1, "alpha", self.alpha, "must be in [0, 1]")
        check(self.temperature > 0, "temperature", self.temperature, "must be positive")
        check(self.train.epochs >= 1, "train.epochs", self.train.epochs, "must be >= 1")


@dataclass
class CompressConfig(Config):
    enabled: bool = False
    techniques: list[Technique] = field(
        default_factory=lambda: ["prune", "lowrank", "deep_compression"]
    )
    prune: PruneStageConfig = field(default_factory=PruneStageConfig)
    structured: StructuredStageConfig = field(default_factory=StructuredStageConfig)
    lowrank: LowRankStageConfig = field(default_factory=LowRankStageConfig)
    deep_compression: DeepCompressionConfig = field(default_factory=DeepCompressionConfig)
    distill: DistillStageConfig = field(default_factory=DistillStageConfig)
    bench_rounds: int = 3
    # Every technique checks the model before any training: a layer it cannot handle is refused
    # by name, or with this set left as it is and listed in the report.
    skip_unsupported: bool = False
    # A run trained with train.adversarial fine-tunes its pruned, structured, low-rank and Deep
    # Compression variants the same way: fine-tuned on clean data they lose most of the
    # robustness (digits, PGD-trained: 74% -> 8-25% under PGD-20; benchmarks/robust.py).
    adversarial_finetune: bool = True

    # Each technique now has its own fine-tuning settings.
    MOVED: ClassVar[dict[str, str]] = {
        k: f"<technique>.finetune.{k}" for k in ("lr", "schedule", "label_smoothing", "batch_size")
    }

    def validate(self) -> None:
        check(self.bench_rounds >= 1, "bench_rounds", self.bench_rounds, "must be >= 1")
        if len(set(self.techniques)) != len(self.techniques):
            raise ConfigError(f"lists a technique twice: {self.techniques}", "techniques")


# --- the techniques: each takes a copy of the trained model, returns the variant(s) to measure ---


@dataclass
class Job:
    """What a technique works with; it fills ``variants`` and ``notes``."""

    teacher: nn.Module
    data: DataBundle
    cfg: CompressConfig
    out_dir: Path
    model_name: str | None
    model_kwargs: dict[str, Any]
    variants: dict[str, nn.Module] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    # The fine-tunings' step (adversarial) built for a fine-tuning's settings, or None: plain.
    make_step: Callable[[FineTune], Any] | None = None

    def step_kw(self, ft: FineTune) -> dict[str, Any]:
        return {"step": self.make_step(ft)} if self.make_step is not None else {}

    @property
    def example(self) -> Any:
        return self.data.test[0][:1]


def finetune(model: nn.Module, data: DataBundle, ft: FineTune, **trainer_kw: Any) -> None:
    """Train ``model`` on the training split as ``ft`` says (no epochs: nothing to do)."""
    import torch

    from dlforge.train import Trainer

    if ft.epochs == 0:
        return
    generator = torch.Generator().manual_seed(ft.seed)
    Trainer(model, ft.train_config(), **trainer_kw).fit(
        data.loader("train", ft.batch_size, True, generator)
    )


def _prune(job: Job) -> None:
    from dlforge.compress.prune import GradualPruner, make_permanent, sparsity

    cfg = job.cfg.prune
    work = plain_copy(job.teacher)
    pruner = GradualPruner.for_epochs(cfg.sparsity, cfg.finetune.epochs, cfg.prune_share)
    finetune(work, job.data, cfg.finetune, callbacks=[pruner], **job.step_kw(cfg.finetune))
    make_permanent(work)
    share = sparsity(work)
    job.notes["prune"] = {k: share[k] for k in ("global", "all_parameters", "left_out")}
    job.notes["prune"]["sparsity"] = share["global"]
    if share["left_out"]:
        log.warning(
            "prune: %.1f%% of the conv/linear weights are zero but only %.1f%% of all "
            "parameters; not pruned: %s",
            100 * share["global"],
            100 * share["all_parameters"],
            ", ".join(share["left_out"]),
        )
    job.variants["prune"] = work


def _structured(job: Job) -> None:
    from dlforge.compress.structured import prune_channels

    cfg = job.cfg.structured
    x, y = job.data.train
    bs = cfg.finetune.batch_size
    end = min(len(x), bs * cfg.importance_batches)  # a small training split gives fewer
    batches = [(x[i : i + bs], y[i : i + bs]) for i in range(0, end, bs)]
    plan = cfg.plan(job.cfg.skip_unsupported)
    surgery = prune_channels(plain_copy(job.teacher), job.example, plan, data=batches)
    if surgery.macs_removed <= 0:
        # Nothing was cut: a row of the same model would read as a result.
        job.notes["structured"] = {"skipped": "no channel could be removed",
                                   "pinned": surgery.pinned}  # fmt: skip
        log.warning("structured: nothing removed, no row reported (%s)", surgery.pinned)
        return
    finetune(surgery.model, job.data, cfg.finetune, **job.step_kw(cfg.finetune))
    job.notes["structured"] = {
        "kept": surgery.kept,
        "removed": surgery.removed,
        "pinned": surgery.pinned,
        "macs_removed": surgery.macs_removed,
        "macs_target": cfg.macs_removed,
        "heads": {"kept": surgery.heads_kept, "removed": surgery.heads_removed},
    }
    job.variants["structured"] = surgery.model


def _lowrank(job: Job) -> None:
    from torch import nn

    from dlforge.compress.lowrank import LowRankConfig, factorize
    from dlforge.models.convert import unpack_attention

    cfg = job.cfg.lowrank
    work = plain_copy(job.teacher)
    unpack_attention(work, "low-rank factorisation", job.cfg.skip_unsupported)  # q/k/v listed
    # The first layer (few input channels) and the classifier (few outputs) gain little and
    # lose most from a rank cut, as is usual practice: factorise the layers between.
    names = [n for n, m in work.named_modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d)]
    inner = names[1:-1] or names
    plan = LowRankConfig(mode="ratio", ratio=cfg.ratio, layers=inner,
                         skip_unsupported=job.cfg.skip_unsupported)  # fmt: skip
    result = factorize(work, plan, job.example)
    finetune(work, job.data, cfg.finetune, **job.step_kw(cfg.finetune))
    job.notes["lowrank"] = {
        "left": result.left,
        "ranks": {k: list(v) for k, v in result.ranks.items()},
        "factorised_params_before": sum(result.params_before.values()),
        "factorised_params_after": sum(result.params_after.values()),
    }
    job.variants["lowrank"] = work


def _deep_compression(job: Job) -> None:
    import torch

    from dlforge.compress.deep_compression import deep_compression

    cfg = job.cfg.deep_compression
    path = job.out_dir / "model.dc"
    ft = cfg.finetune
    loader = job.data.loader("train", ft.batch_size, True, torch.Generator().manual_seed(ft.seed))
    cfg = dataclasses.replace(
        cfg, skip_unsupported=job.cfg.skip_unsupported or cfg.skip_unsupported
    )
    dc = deep_compression(plain_copy(job.teacher), loader, None, path, cfg, make_step=job.make_step)
    job.notes["deep_compression"] = {"file": str(path), "sparsity": dc.sparsity,
                                     "account": dc.account, "dense": dc.dense}  # fmt: skip
    job.variants["deep_compression"] = dc.model


def _distill(job: Job) -> None:
    import torch

    from dlforge.compress.distill import DistillationStep, Distiller, width_scaled
    from dlforge.models import create_model

    if job.model_name is None:
        raise ValueError("distill needs the registry name of the teacher's model")
    cfg = job.cfg.distill
    kwargs = width_scaled(job.model_kwargs, job.model_name, cfg.width, cfg.depth)
    data = job.data

    def student() -> nn.Module:  # the distilled student and the one trained alone start alike
        torch.manual_seed(cfg.train.seed)
        return create_model(job.model_name or "", data.input_shape, data.num_classes, **kwargs)

    distilled = student()
    distiller = Distiller(distilled, plain_copy(job.teacher), cfg.temperature, cfg.alpha)
    finetune(distiller, data, cfg.train, step=DistillationStep(distiller))
    # The same student trained alone on the labels: the yardstick for what distillation adds.
    alone = student()
    finetune(alone, data, cfg.train)
    job.notes["distill"] = {"student_kwargs": kwargs}
    job.variants["distill"] = distilled
    job.variants["student_alone"] = alone


def check_techniques(job: Job) -> dict[str, dict[str, str]]:
    """Per technique, the layers it cannot handle (refused unless ``skip_unsupported``).

    Structured pruning, low-rank and Deep Compression replace layers, so each layer must be
    called by its parent (``compress/checks.py``); every technique but magnitude pruning needs
    torch's attention rewritten (``models/convert.py``); distillation needs a width rule.
    """
    from torch import nn

    from dlforge.compress.checks import uncalled_layers
    from dlforge.compress.distill import width_scaled
    from dlforge.models.convert import UnsupportedLayerError, unpack_attention

    work = plain_copy(job.teacher)
    left = unpack_attention(work, skip_unsupported=True).left
    uncalled = uncalled_layers(work, job.example, (nn.Linear, nn.Conv1d, nn.Conv2d))
    found: dict[str, dict[str, str]] = {}
    for technique in job.cfg.techniques:
        # pruning masks any tensor; a distilled student is built afresh, not rewritten
        problems = {} if technique in ("prune", "distill") else dict(left)
        if technique in ("structured", "lowrank", "deep_compression"):
            problems |= uncalled
        if technique == "distill":
            try:
                width_scaled(job.model_kwargs, job.model_name or "", job.cfg.distill.width,
                             job.cfg.distill.depth)  # fmt: skip
            except ValueError as exc:
                raise ConfigError(str(exc), "compress.distill") from None
        if problems and not job.cfg.skip_unsupported:
            raise UnsupportedLayerError(technique, problems)
        if problems:
            found[technique] = problems
    return found


TECHNIQUES: dict[str, Callable[[Job], None]] = {
    "prune": _prune,
    "structured": _structured,
    "lowrank": _lowrank,
    "deep_compression": _deep_compression,
    "distill": _distill,
}


def compress_stage(
    model: nn.Module,
    data: DataBundle,
    cfg: CompressConfig,
    out_dir: Path,
    model_name: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    robust: Any = None,
    make_step: Callable[[FineTune], Any] | None = None,
) -> dict[str, Any]:
    """Apply each technique to a copy of ``model``; measure every variant and the baseline.

    ``robust`` (a ``dlforge.robust.suite.Probe``) adds each variant's PGD accuracy (white-box)
    and transfer accuracy (PGD inputs crafted on the baseline) at the probe's ε. ``make_step``
    builds the Trainer step the fine-tunings use (``adversarial_step``); distillation keeps its
    own."""
    out_dir.mkdir(parents=True, exist_ok=True)
    job = Job(plain_copy(model), data, cfg, out_dir, model_name, dict(model_kwargs or {}),
              make_step=make_step)  # fmt: skip
    if make_step is not None:
        job.notes["fine_tuning"] = "adversarial (train.adversarial), except distillation"
    job.notes["left_as_is"] = check_techniques(job)  # before any training time is spent
    job.variants["baseline"] = job.teacher
    for technique in cfg.techniques:
        log.info("compress: %s", technique)
        TECHNIQUES[technique](job)
    measured = _measure(job)
    if robust is not None:
        _measure_robustness(job, measured, robust)
    acc = {r["variant"]: r["accuracy"] for r in measured["rows"]}
    if "distill" in acc and "student_alone" in acc:
        gap = acc["baseline"] - acc["student_alone"]
        closed = (acc["distill"] - acc["student_alone"]) / gap if gap > 0 else float("nan")
        measured["notes"]["distill"]["gap_closed"] = closed  # share of the teacher-student gap
        measured["notes"]["distill"]["gap_points"] = 100 * gap
    return measured


def _count(model: nn.Module) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(int((p != 0).sum()) for p in params)


def _measure(job: Job) -> dict[str, Any]:
    import numpy as np
    import torch

    from dlforge.compress.structured import count_macs
    from dlforge.deploy.bench import BenchConfig, Variant, add_ratios, benchmark, ort_runner
    from dlforge.deploy.export import export_onnx

    x, y = job.data.test
    rows: list[dict[str, Any]] = []
    bench_variants: list[Variant] = []
    for name, model in job.variants.items():
        model = plain_copy(model)
        with torch.no_grad():
            acc = float((model(x).argmax(1) == y).float().mean())
        path = export_onnx(model, job.example, job.out_dir / f"{name}.onnx")
        total, nonzero = _count(model)
        stored = job.notes.get(name, {}).get("account", {}).get("file_bytes")
        rows.append(
            {
                "variant": name,
                "accuracy": acc,
                "params": total,
                "nonzero_params": nonzero,
                "macs": count_macs(model, job.example),
                "onnx_bytes": path.stat().st_size,
                "stored_bytes": stored if stored is not None else path.stat().st_size,
            }
        )
        bench_variants.append(Variant(name, ort_runner(path, 2), file=path, accuracy=acc))
    sample = x.numpy().astype(np.float32)
    timing = add_ratios(
        benchmark(bench_variants, sample, BenchConfig(rounds=job.cfg.bench_rounds)), "baseline"
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
    return {"rows": rows, "notes": job.notes, "config": {"techniques": job.cfg.techniques}}


def adversarial_step(recipe: Any, data: DataBundle) -> Callable[[FineTune], Any] | None:
    """A factory of the run's adversarial training step for a fine-tuning (with its label
    smoothing), or None when the run did not train adversarially (or
    ``compress.adversarial_finetune`` is off). The ε ramp is left out: the model is robust
    already, and a short fine-tuning would otherwise spend its epochs at a fraction of ε."""
    adv = recipe.train.adversarial
    if not (adv.enabled and recipe.compress.adversarial_finetune):
        return None
    from dlforge.robust.suite import build_space
    from dlforge.robust.training import AdversarialStep

    space, full = build_space(data, adv.bounds), dataclasses.replace(adv, ramp_epochs=0)
    return lambda ft: AdversarialStep(full, space, label_smoothing=ft.label_smoothing,
                                      seed=recipe.seed)  # fmt: skip


def _measure_robustness(job: Job, measured: dict[str, Any], probe: Any) -> None:
    from dlforge.robust.suite import variant_robustness

    for row in measured["rows"]:
        name = row["variant"]
        log.info("compress: robustness of %s", name)
        source = None if name == "baseline" else job.teacher
        row.update(variant_robustness(job.variants[name], probe, source))
    measured["robust"] = {"eps": probe.compare_eps, "samples": len(probe.y),
                          "steps": probe.settings.steps}  # fmt: skip


class CompressStage(Stage):
    name = "compress"
    title = "Compression (each technique from the same trained model)"

    def preflight(self, recipe: Any, data: DataBundle, model: nn.Module) -> None:
        job = Job(plain_copy(model), data, recipe.compress, Path("."), recipe.model.name,
                  dict(recipe.model.kwargs))  # fmt: skip
        check_techniques(job)

    def run(self, ctx: RunContext) -> dict[str, Any]:
        from dlforge.stages.robust import compare_probe

        r = ctx.recipe
        return compress_stage(
            ctx.model, ctx.data, r.compress, ctx.run_dir / "compress", r.model.name,
            r.model.kwargs, compare_probe(r, ctx.data), adversarial_step(r, ctx.data),
        )  # fmt: skip

    def report(self, result: dict[str, Any], notes: list[str]) -> list[str]:
        from dlforge.report.sections import compress_section

        return compress_section(self.title, result, notes)

    def summary(self, result: dict[str, Any]) -> list[str]:
        from dlforge.report.tables import text_table

        cols = ["variant", "accuracy", "compression_x", "throughput_x", "stored_bytes", "macs"]
        return text_table(result["rows"], cols)
