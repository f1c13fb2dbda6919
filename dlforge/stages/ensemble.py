"""The ensemble stage: several models voting, beside the single trained model.

Members are trained with the recipe's own settings: from other seeds (initialisation and batch
order), on bootstrap samples (bagging), or as the snapshots of one run with cyclic cosine rates
(snapshot ensembles: M members for the price of one run). The table compares the single model,
each member and the ensemble: accuracy, calibration (ECE), log-loss and, on ONNX Runtime, the
ensemble's latency and throughput against the single model's (one ONNX graph for all members).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from dlforge.stages.base import RunContext, Stage, plain_copy

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.data import Sampler

    from dlforge.data import DataBundle
    from dlforge.recipe import Recipe


def ensemble_members(recipe: Recipe, data: DataBundle) -> list[nn.Module]:
    """Train the members the recipe's ``ensemble`` section asks for."""
    from dlforge.evaluate.ensemble import Snapshots, bootstrap_sampler
    from dlforge.stages.train import fit, make_model
    from dlforge.train import ScheduleConfig

    cfg = recipe.ensemble
    if cfg.kind == "snapshot":
        epochs = recipe.train.epochs
        schedule = ScheduleConfig(name="cyclic_cosine", cycles=cfg.members,
                                  min_lr=recipe.train.schedule.min_lr)  # fmt: skip
        # Every cycle must run to its end for its snapshot: no early stopping here.
        stopping = replace(recipe.train.early_stopping, patience=None)
        train = replace(recipe.train, schedule=schedule, restore_best=False,
                        early_stopping=stopping)  # fmt: skip
        snapshots = Snapshots(cfg.members, epochs)
        model = make_model(recipe, data, recipe.seed + 1)
        fit(recipe, data, model, seed=recipe.seed + 1, callbacks=[snapshots], train_config=train)
        return snapshots.models(plain_copy(model))
    members = []
    for i in range(cfg.members):
        seed = recipe.seed + 1 + i
        model = make_model(recipe, data, seed)
        sampler: Sampler[int] | None = None
        if cfg.kind == "bagging":
            sampler = bootstrap_sampler(len(data.train[1]), seed)
        elif cfg.kind == "easy":  # a balanced under-sample of its own (EasyEnsemble)
            from dlforge.data.imbalance import UnderSampler

            sampler = UnderSampler(data.train[1], seed, fixed=True)
        members.append(fit(recipe, data, model, seed=seed, sampler=sampler).model.eval())
    return members


def _scores(model: nn.Module, data: DataBundle) -> dict[str, float]:
    import numpy as np
    import torch

    from dlforge.evaluate import metrics as M

    x, y = data.test
    with torch.no_grad():
        logits = model(x).double()
    proba = torch.softmax(logits, dim=1).numpy()
    labels = y.numpy()
    k = proba.shape[1]
    return {
        "accuracy": M.accuracy_score(labels, proba.argmax(1)),
        "balanced_accuracy": M.balanced_accuracy_score(labels, proba.argmax(1), k),
        "f1_macro": float(M.precision_recall_f1(labels, proba.argmax(1), k, "macro")[2]),
        "expected_calibration_error": M.expected_calibration_error(labels, proba),
        "log_loss": M.log_loss(labels, np.clip(proba, 1e-12, 1)),
    }


def ensemble_stage(ctx: RunContext) -> dict[str, Any]:
    from dlforge.evaluate.ensemble import Ensemble

    cfg = ctx.recipe.ensemble
    single = plain_copy(ctx.model)
    members = [plain_copy(m) for m in ensemble_members(ctx.recipe, ctx.data)]
    ensemble = Ensemble(members, cfg.voting).eval()
    rows: list[dict[str, Any]] = [{"variant": "single model", **_scores(single, ctx.data)}]
    rows += [{"variant": f"member {i + 1}", **_scores(m, ctx.data)} for i, m in enumerate(members)]
    rows.append({"variant": f"ensemble ({cfg.kind}, {cfg.voting} voting)",
                 **_scores(ensemble, ctx.data)})  # fmt: skip
    result: dict[str, Any] = {"kind": cfg.kind, "voting": cfg.voting, "rows": rows}
    member_acc = [float(r["accuracy"]) for r in rows[1:-1]]
    result["mean_member_accuracy"] = sum(member_acc) / len(member_acc)
    result["gain_points"] = 100 * (rows[-1]["accuracy"] - result["mean_member_accuracy"])
    if cfg.bench:
        result["speed"] = _speed(single, ensemble, ctx)
    return result


def _speed(single: nn.Module, ensemble: nn.Module, ctx: RunContext) -> list[dict[str, Any]]:
    """The ensemble's single ONNX graph against the single model's, on ONNX Runtime."""
    import numpy as np

    from dlforge.deploy.bench import Variant, add_ratios, benchmark, ort_runner
    from dlforge.deploy.config import BenchConfig
    from dlforge.deploy.export import export_onnx

    x = ctx.data.test[0]
    out = ctx.run_dir / "ensemble"
    variants = []
    for name, model in (("single model", single), ("ensemble", ensemble)):
        path = export_onnx(model, x[:1], out / f"{name.replace(' ', '_')}.onnx")
        variants.append(Variant(name, ort_runner(path, 2), file=path))
    rows = benchmark(variants, x.numpy().astype(np.float32), BenchConfig(rounds=3))
    return add_ratios(rows, "single model")


class EnsembleStage(Stage):
    name = "ensemble"
    title = "Ensemble"

    def run(self, ctx: RunContext) -> dict[str, Any]:
        return ensemble_stage(ctx)

    def report(self, result: dict[str, Any], notes: list[str]) -> list[str]:
        from dlforge.report.sections import ensemble_section

        return ensemble_section(self.title, result, notes)

    def summary(self, result: dict[str, Any]) -> list[str]:
        from dlforge.report.tables import text_table

        single, ens = result["rows"][0], result["rows"][-1]
        return text_table([single, ens], ["variant", "accuracy", "expected_calibration_error"])
