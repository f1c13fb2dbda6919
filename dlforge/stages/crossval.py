"""The crossval stage (and ``dlforge cv``): k-fold cross-validation of the recipe on its training
pool, a fresh model per fold, per-fold metrics and their mean and spread."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dlforge.stages.base import RunContext, Stage

if TYPE_CHECKING:
    from torch import nn

    from dlforge.recipe import Recipe


def cross_validate(recipe: Recipe, keep_models: bool = False) -> dict[str, Any]:
    """Cross-validate ``recipe`` (its ``crossval`` settings) on the training and validation
    splits pooled; the test split is not used. Returns per-fold metrics and the summary (and,
    with ``keep_models``, the fold models under ``"models"``: an ensemble's members)."""
    import os

    from dlforge.config import ConfigError

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("runs in one process: start `dlforge cv` without torchrun", "crossval")
    import numpy as np

    from dlforge.data.load import bundle, read_source, split_data, split_indices
    from dlforge.data.splits import stratified_split
    from dlforge.evaluate.crossval import run_folds
    from dlforge.evaluate.evaluate import evaluate_model
    from dlforge.stages.train import fit, make_model

    cfg = recipe.crossval
    raw = read_source(recipe.data, recipe.seed)
    splits = split_data(raw, recipe.data, recipe.seed)
    x = np.concatenate([splits["train"][0], splits["val"][0]])
    y = np.concatenate([splits["train"][1], splits["val"][1]])
    groups = None
    if raw.groups is not None:
        idx = split_indices(raw, recipe.data, recipe.seed)
        groups = np.concatenate([raw.groups[idx["train"]], raw.groups[idx["val"]]])
    models: list[nn.Module] = []
    val_share = recipe.data.val_fraction

    def fit_and_score(fold: int, train_idx: Any, held_idx: Any) -> dict[str, Any]:
        seed = recipe.seed + 1000 * (fold + 1)
        xt, yt, xv, yv = stratified_split(x[train_idx], y[train_idx], val_share, seed, "fold")
        data = bundle(
            {"train": (xt, yt), "val": (xv, yv), "test": (x[held_idx], y[held_idx])},
            raw.class_names,
            recipe.data.source,
            recipe.data.normalize,
        )  # normalised with this fold's training statistics only
        model = make_model(recipe, data, seed)
        trainer = fit(recipe, data, model, seed=seed)
        result = evaluate_model(
            trainer.model, data.loader("test", recipe.evaluate.batch_size), data.class_names,
            recipe.evaluate, device=trainer.device, seed=seed,
        )  # fmt: skip
        if keep_models:
            models.append(trainer.model.eval())
        s = result["summary"]
        return {k: s[k] for k in ("accuracy", "f1_macro", "balanced_accuracy", "log_loss",
                                  "expected_calibration_error")} | {
            "epochs": len(trainer.history.epochs)
        }  # fmt: skip

    out = run_folds(y, cfg, recipe.seed, fit_and_score, groups)
    out["pool_size"] = len(y)
    if keep_models:
        out["models"] = models
    return out


class CrossValStage(Stage):
    name = "crossval"
    title = "Cross-validation"

    def run(self, ctx: RunContext) -> dict[str, Any]:
        result = cross_validate(ctx.recipe)
        single = ctx.results.get("evaluate", {}).get("summary", {})
        result["single_split"] = {k: single[k] for k in ("accuracy", "f1_macro") if k in single}
        return result

    def report(self, result: dict[str, Any], notes: list[str]) -> list[str]:
        from dlforge.report.sections import crossval_section

        return crossval_section(self.title, result, notes)

    def summary(self, result: dict[str, Any]) -> list[str]:
        acc = result["summary"].get("accuracy")
        lines = [f"{len(result['folds'])} folds ({result['kind']})"]
        if acc:
            lines.append(f"accuracy {acc['mean']:.4f} ± {acc['std']:.4f} (mean ± sd over folds)")
        if result["failed"]:
            lines.append(f"failed folds: {result['failed']}")
        return lines
