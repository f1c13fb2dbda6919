"""The evaluate stage: every metric of the trained model on the chosen split."""

from __future__ import annotations

from typing import Any

from dlforge.stages.base import RunContext, Stage


def thresholded_scores(ctx: RunContext, decision: dict[str, Any]) -> dict[str, Any]:
    """Test metrics of the binary decision at the stored threshold."""
    import torch
    from sklearn.metrics import balanced_accuracy_score, f1_score, precision_score, recall_score

    from dlforge.evaluate.thresholds import apply_threshold

    x, y = ctx.data.test
    device = next(ctx.model.parameters()).device
    with torch.no_grad():
        proba = torch.softmax(ctx.model.eval()(x.to(device)).float(), 1).cpu().numpy()
    pred, labels = apply_threshold(proba, decision), y.numpy()
    return {
        "threshold": decision["threshold"],
        "chosen_for": decision.get("metric"),
        "accuracy": float((pred == labels).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(labels, pred)),
        "precision": float(precision_score(labels, pred, zero_division=0)),
        "recall": float(recall_score(labels, pred, zero_division=0)),
        "f1": float(f1_score(labels, pred, zero_division=0)),
    }


class EvaluateStage(Stage):
    name = "evaluate"
    title = "Metrics"

    def enabled(self, recipe: Any) -> bool:
        return True

    def run(self, ctx: RunContext) -> dict[str, Any]:
        from dlforge.evaluate import evaluate_model
        from dlforge.evaluate.attention_maps import attention_examples

        cfg = ctx.recipe.evaluate
        result = evaluate_model(
            ctx.model,
            ctx.data.loader(cfg.split, cfg.batch_size),
            ctx.data.class_names,
            cfg,
            device=next(ctx.model.parameters()).device,
            seed=ctx.seed,
        )
        import numpy as np

        from dlforge.evaluate.imbalance import imbalance_report

        train_counts = np.bincount(ctx.data.train[1].numpy(), minlength=ctx.data.num_classes)
        smote = ctx.data.notes.get("smote")
        if smote:  # the groups and the ratio are those of the data as read, before SMOTE
            train_counts = np.asarray(smote["counts_before"])
        per_class = result["per_class"]
        result["imbalance"] = imbalance_report(
            [c["recall"] for c in per_class], [c["support"] for c in per_class], train_counts
        )
        result["summary"]["geometric_mean"] = result["imbalance"]["geometric_mean"]
        kind = ctx.recipe.data.imbalance.sampler
        if kind is not None:  # what one epoch of the training sampler holds, per class
            from dlforge.data.imbalance import make_sampler, resample_counts

            sampler = make_sampler(kind, ctx.data.train[1], ctx.seed, ctx.recipe.train.batch_size)
            result["imbalance"]["sampled_counts"] = resample_counts(sampler, ctx.data.train[1])
            result["imbalance"]["sampler"] = kind
        decision = ctx.data.preprocessing.get("decision") or {}
        if "threshold" in decision:  # what the deployed model predicts: the threshold, not argmax
            result["decision"] = thresholded_scores(ctx, decision)
        if smote:
            result["imbalance"]["sampled_counts"] = smote["counts_after"]
            result["imbalance"]["sampler"] = smote["method"]
        x, y = ctx.data.test
        device = next(ctx.model.parameters()).device
        maps = attention_examples(ctx.model, x.to(device), y, ctx.data.class_names)
        if maps is not None:
            result["attention"] = maps
        return result

    def report(self, result: dict[str, Any], notes: list[str]) -> list[str]:
        from dlforge.report.sections import evaluate_section

        return evaluate_section(result, notes)

    def summary(self, result: dict[str, Any]) -> list[str]:
        s = result["summary"]
        return [
            f"{result['split']} accuracy {s['accuracy']:.4f}  macro F1 {s['f1_macro']:.4f}  "
            f"ECE {s['expected_calibration_error']:.4f}  ({result['n_samples']} samples)"
        ]
