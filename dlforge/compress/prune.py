"""Unstructured magnitude pruning: masks, gradual (cubic) schedules, iterative prune/fine-tune.

A pruned weight is ``weight_orig * mask`` through ``torch.nn.utils.parametrize``, so pruned
entries stay exactly zero while fine-tuning (their gradient is masked too) until
``make_permanent`` writes the zeros into the plain weight. Unstructured sparsity shrinks the
stored model but does not speed up dense kernels; structured pruning is what removes FLOPs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

from dlforge.config import Config, ConfigError, check
from dlforge.train.callbacks import Callback

if TYPE_CHECKING:
    from dlforge.train.trainer import Trainer

LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.Embedding)  # their ``weight`` is pruned
# torch's attention keeps q/k/v packed in in_proj_weight (or three *_proj_weight matrices).
ATTENTION_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


class Mask(nn.Module):
    """The parametrization: weight = original * mask (mask is a buffer, not trained)."""

    mask: torch.Tensor

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


@dataclass
class MagnitudePrune(Config):
    amount: float | None = 0.5  # fraction of weights to remove
    threshold: float | None = None  # or: remove every weight with |w| <= threshold
    scope: Literal["global", "layer"] = "global"  # one ranking for all layers, or per layer
    layers: list[str] | None = None  # default: every conv and linear layer

    def validate(self) -> None:
        if (self.amount is None) == (self.threshold is None):
            raise ConfigError("give exactly one of amount or threshold", "amount")
        if self.amount is not None:
            check(0.0 <= self.amount < 1.0, "amount", self.amount, "must be in [0, 1)")
        if self.threshold is not None:
            check(self.threshold >= 0, "threshold", self.threshold, "must be >= 0")


Target = tuple[nn.Module, str]  # a module and the name of the weight matrix pruned in it


def _matrices(module: nn.Module) -> list[str]:
    """The weight matrices of ``module`` itself that pruning ranks."""
    if isinstance(module, LAYERS):
        return ["weight"]
    if isinstance(module, nn.MultiheadAttention):  # its out_proj is an nn.Linear of its own
        return [n for n in ATTENTION_WEIGHTS if getattr(module, n, None) is not None]
    if isinstance(module, nn.RNNBase):  # GRU/LSTM/RNN: input and recurrent matrices per layer
        return [n for n in module._flat_weights_names if n.startswith("weight_")]
    return []


def _key(module_name: str, tensor: str) -> str:
    """A layer's name for its ``weight`` (``conv1``), else ``module.tensor``
    (``attn.in_proj_weight``, ``gru.weight_hh_l0``)."""
    if tensor == "weight":
        return module_name
    return f"{module_name}.{tensor}" if module_name else tensor


def prunable_weights(model: nn.Module, names: list[str] | None = None) -> dict[str, Target]:
    """Every weight matrix pruning can mask: conv, linear and embedding weights, torch
    attention's packed projections and recurrent layers' matrices, by ``_key`` name."""
    found: dict[str, Target] = {}
    for mname, module in model.named_modules():
        for tensor in _matrices(module):
            found[_key(mname, tensor)] = (module, tensor)
    if names is not None:
        unknown = sorted(set(names) - set(found))
        if unknown:
            raise ValueError(f"prune: no weight matrix named {unknown} (have: {sorted(found)})")
        found = {n: found[n] for n in names}
    if not found:
        raise ValueError("prune: the model has no conv, linear, attention or recurrent weights")
    return found


def effective_weight(target: Target) -> torch.Tensor:
    module, tensor = target
    return getattr(module, tensor).detach()  # a parametrized weight is already masked


def _smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """A 0/1 mask that removes the ``k`` smallest scores (as torch.nn.utils.prune does)."""
    flat = scores.reshape(-1)  # logical order, also for channels_last weights
    mask = torch.ones(flat.numel(), dtype=scores.dtype, device=scores.device)
    if k > 0:
        mask[torch.topk(flat, k, largest=False).indices] = 0
    return mask.reshape(scores.shape)


def compute_masks(model: nn.Module, cfg: MagnitudePrune) -> dict[str, torch.Tensor]:
    targets = prunable_weights(model, cfg.layers)
    weights = {n: effective_weight(t).abs() for n, t in targets.items()}
    if cfg.threshold is not None:
        return {n: (w > cfg.threshold).float() for n, w in weights.items()}
    assert cfg.amount is not None
    if cfg.scope == "layer":
        return {n: _smallest(w, round(cfg.amount * w.numel())) for n, w in weights.items()}
    flat = torch.cat([w.flatten() for w in weights.values()])
    mask = _smallest(flat, round(cfg.amount * flat.numel()))
    out, start = {}, 0
    for n, w in weights.items():
        out[n] = mask[start : start + w.numel()].reshape(w.shape)
        start += w.numel()
    return out


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Attach (or replace) each weight's mask; returns the model (changed in place)."""
    targets = prunable_weights(model)
    unknown = sorted(set(masks) - set(targets))
    if unknown:
        raise ValueError(f"prune: no weight matrix named {unknown}")
    for name, mask in masks.items():
        module, tensor = targets[name]
        existing = _mask_of(module, tensor)
        if existing is not None:
            existing.mask.copy_(mask.to(existing.mask))
        else:
            weight = getattr(module, tensor)
            parametrize.register_parametrization(module, tensor, Mask(mask.to(weight)))
    return model


def _mask_of(module: nn.Module, tensor: str) -> Mask | None:
    if not parametrize.is_parametrized(module, tensor):
        return None
    plist = module.parametrizations[tensor]  # type: ignore[index]
    return next((p for p in plist if isinstance(p, Mask)), None)


def magnitude_prune(model: nn.Module, cfg: MagnitudePrune | None = None) -> nn.Module:
    """Prune the smallest-magnitude weights; a second call prunes further (masks only grow)."""
    return apply_masks(model, compute_masks(model, cfg or MagnitudePrune()))


def own_class(module: nn.Module) -> None:
    """Give a parametrized module a class of its own before a parametrization is removed.

    A deep copy of a parametrized module shares its generated class, and removal deletes the
    tensor's property from that class: the module it was copied from (or to) would lose it."""
    cls = type(module)
    module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))


def make_permanent(model: nn.Module) -> nn.Module:
    """Bake the masks in: plain ``weight`` parameters with the pruned entries at zero."""
    for module in list(model.modules()):  # removal edits the module tree
        masked = [t for t in _matrices(module) if _mask_of(module, t) is not None]
        if masked:
            own_class(module)
        for tensor in masked:
            parametrize.remove_parametrizations(module, tensor, leave_parametrized=True)
    return model


def sparsity(model: nn.Module) -> dict[str, Any]:
    """Zero shares: of the prunable weight matrices (what pruning ranks), per matrix and overall
    (``global``), and of every parameter the model has (``all_parameters``).

    ``left_out`` names weight matrices of modules pruning does not know (a user's own layer
    with a ``weight`` parameter): the ``global`` figure does not count them, and must say so.
    """
    per_layer, zeros, total = {}, 0, 0
    targets = prunable_weights(model)
    for name, t in targets.items():
        w = effective_weight(t)
        z = int((w == 0).sum())
        per_layer[name] = z / w.numel()
        zeros, total = zeros + z, total + w.numel()
    tensors = effective_parameters(model)
    all_zeros = sum(int((t == 0).sum()) for t in tensors.values())
    all_total = sum(t.numel() for t in tensors.values())
    counted = {f"{n}.weight" if tensor == "weight" else n for n, (_, tensor) in targets.items()}
    left_out = [
        n
        for n, t in tensors.items()
        if t.dim() >= 2 and n not in counted and "weight" in n.rpartition(".")[2]
    ]
    return {
        "global": zeros / total,
        "layers": per_layer,
        "all_parameters": all_zeros / max(all_total, 1),
        "left_out": left_out,
    }


def effective_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter by its plain name, with masks applied (``conv.weight``, not
    ``conv.parametrizations.weight.original``); shared tensors once."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for mname, module in model.named_modules():
        prefix = f"{mname}." if mname else ""
        for pname, p in module.named_parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                out[prefix + pname] = p.detach()
        if parametrize.is_parametrized(module):
            for tname, plist in module.parametrizations.items():
                seen.update(id(q) for q in plist.parameters())
                out[prefix + tname] = getattr(module, tname).detach()
    return out


def cubic_sparsity(step: int, start: int, end: int, final: float, initial: float = 0.0) -> float:
    """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))^3; ``final``
    from ``end`` on (also when ``start == end``: prune at once)."""
    if step >= end:
        return final
    if step <= start:
        return initial
    progress = (step - start) / (end - start)
    return final + (initial - final) * (1 - progress) ** 3


class GradualPruner(Callback):
    """A Trainer callback raising global sparsity on the cubic schedule at the start of each
    epoch: ``Trainer(model, cfg, callbacks=[GradualPruner(0.9, 0, 10)])``.

    The schedule reaches ``final`` at the start of epoch ``end_epoch``. Before that the model is
    less pruned than asked, so those epochs are marked ineligible as the Trainer's best weights:
    restoring the best then returns a model at the scheduled sparsity.
    """

    def __init__(
        self,
        final: float,
        start_epoch: int,
        end_epoch: int,
        initial: float = 0.0,
        layers: list[str] | None = None,
        scope: Literal["global", "layer"] = "global",
    ) -> None:
        if not 0 <= start_epoch <= end_epoch:
            raise ValueError(
                f"gradual pruning needs 0 <= start_epoch <= end_epoch, got {start_epoch}, "
                f"{end_epoch}"
            )
        if not 0 <= initial <= final < 1:
            raise ValueError(f"needs 0 <= initial <= final < 1, got {initial}, {final}")
        self.final, self.start, self.end, self.initial = final, start_epoch, end_epoch, initial
        self.layers, self.scope = layers, scope
        self.history: list[tuple[int, float]] = []

    @classmethod
    def for_epochs(cls, final: float, epochs: int, share: float = 0.5, **kw: Any) -> GradualPruner:
        """Raise sparsity over the first ``share`` of ``epochs``, then fine-tune at ``final``.

        Zhu & Gupta stop pruning before training ends so that the network recovers at the final
        sparsity. With 40 epochs on the small CNNs, ending the ramp on the last epoch instead
        measured the same within the seeds' spread (benchmarks/compress_ablations.py)."""
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share}")
        # The last epoch at the latest trains at the final sparsity.
        end = min(max(1, round(share * epochs)), epochs - 1)
        return cls(final, start_epoch=0, end_epoch=max(end, 0), **kw)

    def best_eligible(self, epoch: int) -> bool:
        """Whether the model trained in ``epoch`` was at the final sparsity."""
        return epoch >= self.end

    def apply(self, epoch: int, model: nn.Module) -> float:
        """Prune ``model`` to the schedule's sparsity for ``epoch``; returns it."""
        target = cubic_sparsity(epoch, self.start, self.end, self.final, self.initial)
        if target > 0:
            magnitude_prune(
                model, MagnitudePrune(amount=target, layers=self.layers, scope=self.scope)
            )
        self.history.append((epoch, target))
        return target

    def on_train_epoch_start(self, trainer: Trainer) -> None:
        self.apply(trainer.epoch, trainer.model)
        trainer.best_eligible = trainer.best_eligible and self.best_eligible(trainer.epoch)

    def on_restore(self, trainer: Trainer, model_state: dict[str, torch.Tensor]) -> None:
        """A resumed run's saved weights carry masks: put (placeholder) masks on the layers
        they belong to, so the state loads; the saved masks then replace them."""
        masks = {}
        for key, value in model_state.items():
            owner, sep, rest = key.partition(".parametrizations.")
            if sep and rest.endswith(".original"):
                masks[_key(owner, rest[: -len(".original")])] = torch.ones_like(value)
        apply_masks(trainer.model, masks)

    def state_dict(self) -> dict[str, Any]:
        return {"history": [list(h) for h in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [(int(e), float(s)) for e, s in state.get("history", [])]


def iterative_prune(
    model: nn.Module,
    train_loader: torch.utils.data.DataLoader,
    final: float,
    rounds: int,
    train_config: Any,
    val_loader: torch.utils.data.DataLoader | None = None,
) -> list[dict[str, Any]]:
    """Prune to ``final`` sparsity in ``rounds`` geometric steps, fine-tuning after each."""
    from dlforge.train import Trainer

    log = []
    keep = 1.0 - final
    for r in range(1, rounds + 1):
        amount = 1.0 - math.pow(keep, r / rounds)  # the same fraction of survivors each round
        magnitude_prune(model, MagnitudePrune(amount=amount))
        history = Trainer(model, train_config).fit(train_loader, val_loader)
        log.append(
            {"round": r, "sparsity": sparsity(model)["global"], "last_epoch": history.epochs[-1]}
        )
    return log
