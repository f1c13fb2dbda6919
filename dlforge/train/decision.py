"""How a trained model decides on imbalanced classes, chosen after training.

- Post-hoc logit adjustment (Menon et al. 2021): logits - tau log pi. It is folded into the
  classifier head's bias, so the model itself (its evaluation, its ONNX files, the server)
  decides the adjusted way, with nothing to remember.
- Threshold moving for binary problems (``evaluate/thresholds.py`` applies it): the probability of the positive class (class 1) above
  which it is predicted, chosen on the validation split to maximise F1 or to reach a recall.
  It is stored in the preprocessing (``decision.threshold``) that ``Session`` and the server
  read, and in the checkpoint.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.metrics import precision_recall_curve
from torch import nn

from dlforge.config import ConfigError
from dlforge.train.config import DecisionConfig
from dlforge.train.decoupled import classifier_head
from dlforge.train.losses import class_counts, log_priors


@torch.no_grad()
def fold_logit_adjustment(
    model: nn.Module, counts: np.ndarray | list[int], tau: float = 1.0
) -> dict[str, Any]:
    """Subtract ``tau * log pi`` from the classifier head's bias (one is added if it has none)."""
    name, head = classifier_head(model, len(counts))
    offset = (tau * log_priors(counts)).to(head.weight.device)
    if head.bias is None:
        raise ConfigError(f"classifier head '{name}' has no bias to fold the adjustment into")
    head.bias.sub_(offset)
    return {"head": name, "tau": tau, "offset": (-offset).tolist()}


def choose_threshold(
    y_true: np.ndarray, p_positive: np.ndarray, metric: str = "f1", target_recall: float = 0.9
) -> dict[str, Any]:
    """The threshold on P(class 1) that maximises F1, or the highest one whose recall is at
    least ``target_recall`` (most precise at that recall), with its precision and recall."""
    precision, recall, thresholds = precision_recall_curve(y_true, p_positive)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    if len(thresholds) == 0:
        raise ConfigError("the validation split has one class only: no threshold to choose")
    if metric == "f1":
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        i = int(np.argmax(f1))
    elif metric == "recall":
        ok = np.flatnonzero(recall >= target_recall)
        i = int(ok[-1])  # thresholds ascend: the last one still reaching the recall
    else:
        raise ConfigError(f"threshold metric '{metric}' is unknown; choose f1 or recall")
    return {"threshold": float(thresholds[i]), "precision": float(precision[i]),
            "recall": float(recall[i]), "metric": metric}  # fmt: skip


@torch.no_grad()
def positive_proba(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [torch.softmax(model(x[i : i + batch_size].to(device)).float(), 1)[:, 1].cpu()
           for i in range(0, len(x), batch_size)]  # fmt: skip
    model.train(was)
    return torch.cat(out).numpy()


def decide(model: nn.Module, data: Any, cfg: DecisionConfig) -> dict[str, Any]:
    """Apply the recipe's decision settings to ``model`` (in place) and return what to store
    under ``preprocessing["decision"]`` (empty when nothing was asked)."""
    out: dict[str, Any] = {}
    if cfg.logit_adjust_tau is not None:
        counts = class_counts(data.train[1], data.num_classes)
        out["logit_adjustment"] = fold_logit_adjustment(model, counts, cfg.logit_adjust_tau)
    if cfg.threshold is not None:
        if data.num_classes != 2:
            raise ConfigError(
                f"threshold moving is for two classes; this data has {data.num_classes} "
                "(use logit adjustment for more)",
                "train.decision.threshold",
            )
        x, y = data.val
        out.update(choose_threshold(y.numpy(), positive_proba(model, x), cfg.threshold,
                                    cfg.target_recall))  # fmt: skip
        out["positive"] = 1
    return out
