"""Decoupled training (Kang et al. 2020, classifier re-training): keep a trained backbone, and
train the classifier head again on class-balanced data, here the backbone's embeddings of the
training split balanced by SMOTE (or its relatives), or by re-sampling them.

The head is the model's last ``nn.Linear`` with one output per class; its input is captured
with a forward hook in eval mode (dropout off, batch norm frozen), which is exactly what the
head reads at prediction time, so the retrained head drops in place.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dlforge.config import ConfigError


def classifier_head(model: nn.Module, num_classes: int) -> tuple[str, nn.Linear]:
    """The last ``nn.Linear`` with ``num_classes`` outputs; refused by name when none is."""
    found = [(n, m) for n, m in model.named_modules()
             if isinstance(m, nn.Linear) and m.out_features == num_classes]  # fmt: skip
    if not found:
        raise ConfigError(
            f"{type(model).__name__} has no nn.Linear with {num_classes} outputs to retrain "
            "as its classifier head"
        )
    return found[-1]


@torch.no_grad()
def head_inputs(
    model: nn.Module, head: nn.Module, x: torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """What ``head`` reads for each input of ``x`` (eval mode), as (N, features)."""
    seen: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, args, _out: seen.append(args[0].detach()))
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(x), batch_size):
            model(x[i : i + batch_size])
    finally:
        hook.remove()
        model.train(was_training)
    feats = torch.cat(seen)
    if feats.ndim != 2 or len(feats) != len(x):
        raise ConfigError(
            f"the head reads inputs of shape {tuple(feats.shape[1:])} per call; decoupled "
            "training needs one feature vector per sample"
        )
    return feats


def retrain_head(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    method: str = "smote",
    epochs: int = 30,
    lr: float = 1e-2,
    batch_size: int = 128,
    seed: int = 0,
    k_neighbors: int = 5,
) -> dict[str, Any]:
    """Retrain the classifier head of ``model`` (in place) on the training split's embeddings,
    class-balanced by ``method``: ``smote``, ``borderline``, ``adasyn`` (synthetic embeddings)
    or ``oversample`` (repeated embeddings). The backbone is not touched."""
    from dlforge.data.smote import METHODS, smote_features

    name, head = classifier_head(model, num_classes)
    feats = head_inputs(model, head, x).cpu().numpy()
    labels = y.cpu().numpy()
    before = np.bincount(labels, minlength=num_classes)
    if method in METHODS:
        feats, labels, k_neighbors = _enough_neighbours(feats, labels, k_neighbors, seed)
        feats, labels = smote_features(feats, labels, method, seed, k_neighbors)
    elif method == "oversample":
        from dlforge.data.imbalance import OverSampler

        idx = np.array(list(OverSampler(labels, seed)))
        feats, labels = feats[idx], labels[idx]
    else:
        raise ConfigError(
            f"decoupled method '{method}' is unknown; choose one of {(*METHODS, 'oversample')}"
        )
    device = head.weight.device
    xs = torch.as_tensor(feats, dtype=torch.float32, device=device)
    ys = torch.as_tensor(labels, dtype=torch.long, device=device)
    gen = torch.Generator().manual_seed(seed)
    fresh = nn.Linear(head.in_features, num_classes, bias=head.bias is not None).to(device)
    torch.manual_seed(seed)
    fresh.reset_parameters()
    opt = torch.optim.Adam(fresh.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs))
    for _ in range(epochs):
        order = torch.randperm(len(xs), generator=gen).to(device)
        for i in range(0, len(xs), batch_size):
            b = order[i : i + batch_size]
            loss = F.cross_entropy(fresh(xs[b]), ys[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    with torch.no_grad():
        head.weight.copy_(fresh.weight)
        if head.bias is not None and fresh.bias is not None:
            head.bias.copy_(fresh.bias)
    return {
        "head": name,
        "method": method,
        "features": int(xs.shape[1]),
        "counts_before": before.tolist(),
        "counts_after": np.bincount(labels, minlength=num_classes).tolist(),
        "epochs": epochs,
        "k_neighbors": k_neighbors,
    }


def _enough_neighbours(
    feats: np.ndarray, labels: np.ndarray, k: int, seed: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """SMOTE needs more than k samples of a class: lower k to the rarest class's count - 1,
    and repeat the samples of a class with a single one (a long tail at ratio 100 has such
    classes) so that it has two."""
    counts = np.bincount(labels)
    rarest = int(counts[counts > 0].min())
    if rarest > k:
        return feats, labels, k
    if rarest == 1:
        singles = np.flatnonzero(np.isin(labels, np.flatnonzero(counts == 1)))
        feats = np.concatenate([feats, feats[singles]])
        labels = np.concatenate([labels, labels[singles]])
        rarest = 2
    return feats, labels, rarest - 1
