"""Run a model over a split and compute every metric the report shows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from dlforge.evaluate import metrics as M
from dlforge.evaluate.clustering import cluster_embeddings
from dlforge.evaluate.config import EvalConfig


@dataclass
class Predictions:
    logits: np.ndarray  # (N, K)
    labels: np.ndarray  # (N,)
    embeddings: np.ndarray | None  # (N, D): the input of the last Linear layer

    @property
    def proba(self) -> np.ndarray:
        z = self.logits.astype(np.float64)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


def _last_linear(model: nn.Module) -> nn.Linear | None:
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    return last


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device | str = "cpu",
    embeddings: bool = True,
) -> Predictions:
    """Logits (and penultimate embeddings) for every sample of ``loader``, in eval mode."""
    model.eval()
    device = torch.device(device)
    captured: list[torch.Tensor] = []
    head = _last_linear(model) if embeddings else None
    hook = (
        head.register_forward_hook(
            lambda _m, inp, _out: captured.append(inp[0].flatten(1).float().cpu())
        )
        if head is not None
        else None
    )
    logits, labels = [], []
    try:
        for x, y in loader:
            logits.append(model(x.to(device)).float().cpu())
            labels.append(y)
    finally:
        if hook is not None:
            hook.remove()
    return Predictions(
        logits=torch.cat(logits).numpy(),
        labels=torch.cat(labels).numpy(),
        embeddings=torch.cat(captured).numpy() if captured else None,
    )


def classification_report(
    y_true: np.ndarray, proba: np.ndarray, class_names: list[str], n_bins: int = 15
) -> dict[str, Any]:
    """Every classification metric, with the curves the report plots."""
    k = len(class_names)
    y_pred = proba.argmax(axis=1)
    per_p, per_r, per_f = M.precision_recall_f1(y_true, y_pred, k)
    summary: dict[str, Any] = {
        "accuracy": M.accuracy_score(y_true, y_pred, k),
        "balanced_accuracy": M.balanced_accuracy_score(y_true, y_pred, k),
        "log_loss": M.log_loss(y_true, proba),
        "expected_calibration_error": M.expected_calibration_error(y_true, proba, n_bins),
        "roc_auc_ovr_macro": M.roc_auc_ovr(y_true, proba, "macro"),
        "roc_auc_ovr_weighted": M.roc_auc_ovr(y_true, proba, "weighted"),
        "average_precision_macro": M.average_precision_ovr(y_true, proba, "macro"),
    }
    for avg in ("macro", "micro", "weighted"):
        p, r, f = M.precision_recall_f1(y_true, y_pred, k, avg)
        summary.update({f"precision_{avg}": p, f"recall_{avg}": r, f"f1_{avg}": f})
    support = np.bincount(y_true, minlength=k)
    per_class = [
        {
            "class": name,
            "precision": float(per_p[i]),  # type: ignore[index]
            "recall": float(per_r[i]),  # type: ignore[index]
            "f1": float(per_f[i]),  # type: ignore[index]
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    ]
    curves: dict[str, Any] = {"roc": {}, "pr": {}}
    for i, name in enumerate(class_names):
        positives = y_true == i
        if positives.any() and not positives.all():
            fpr, tpr, _ = M.roc_curve(positives, proba[:, i], drop_intermediate=True)
            prec, rec, _ = M.precision_recall_curve(positives, proba[:, i])
            curves["roc"][name] = {
                "fpr": fpr.tolist(),
                "tpr": tpr.tolist(),
                "auc": M.roc_auc_binary(positives, proba[:, i]),
            }
            curves["pr"][name] = {
                "precision": prec.tolist(),
                "recall": rec.tolist(),
                "ap": M.average_precision_score(positives, proba[:, i]),
            }
    bins = M.reliability_bins(y_true, proba, n_bins)
    return {
        "summary": summary,
        "per_class": per_class,
        "confusion_matrix": M.confusion_matrix(y_true, y_pred, k).tolist(),
        "curves": curves,
        "reliability": {key: v.tolist() for key, v in bins.items()},
    }


def evaluate_model(
    model: nn.Module,
    loader: DataLoader,
    class_names: list[str],
    cfg: EvalConfig | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    cfg = cfg or EvalConfig()
    preds = predict(model, loader, device, embeddings=cfg.clustering)
    result = classification_report(preds.labels, preds.proba, class_names, cfg.calibration_bins)
    result["split"] = cfg.split
    result["n_samples"] = len(preds.labels)
    if cfg.clustering and preds.embeddings is not None:
        n_clusters = len(np.unique(preds.labels))
        if 2 <= n_clusters < len(preds.labels):
            result["clustering"] = {
                "n_clusters": n_clusters,
                "embedding_dim": int(preds.embeddings.shape[1]),
                **cluster_embeddings(preds.embeddings, preds.labels, n_clusters, seed),
            }
    return result
