"""Ensembles: several models voting as one ``nn.Module`` that exports to one ONNX graph.

Members come from anywhere: the k-fold models, several seeds, bootstrap samples (bagging,
Breiman 1996) or the snapshots of one run with cyclic cosine rates (snapshot ensembles, Huang
et al., 2017). Soft voting averages the members' probabilities; hard voting counts their
top-1 votes. The ensemble's output is the log of what it averages, so softmax of it gives back
the averaged probabilities (or vote shares), and argmax, accuracy and calibration read it like
any model's logits.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import RandomSampler

from dlforge.train.callbacks import Callback

Voting = Literal["soft", "hard"]


class Ensemble(nn.Module):
    """``log(mean_m softmax(member_m(x)))`` (soft) or ``log(vote share)`` (hard)."""

    def __init__(self, members: Sequence[nn.Module], voting: Voting = "soft") -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if voting not in ("soft", "hard"):
            raise ValueError(f"voting must be soft or hard, got {voting!r}")
        self.members = nn.ModuleList(members)
        self.voting = voting

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total: torch.Tensor | None = None
        for m in self.members:
            p = torch.softmax(m(x).float(), dim=1)
            if self.voting == "hard":  # a one-hot vote; ties inside a member count for each
                p = (p == p.amax(dim=1, keepdim=True)).float()
                p = p / p.sum(dim=1, keepdim=True)
            total = p if total is None else total + p
        assert total is not None
        # A class nobody voted for gets log(tiny) rather than -inf, which ONNX and losses take.
        return torch.log(total / len(self.members) + 1e-12)


def bootstrap_sampler(n: int, seed: int) -> RandomSampler:
    """A bootstrap sample of ``n`` items: ``n`` draws with replacement (Breiman's bagging)."""
    generator = torch.Generator().manual_seed(seed)
    return RandomSampler(range(n), replacement=True, num_samples=n, generator=generator)


class Snapshots(Callback):
    """Keeps a copy of the weights at the end of each cosine cycle (snapshot ensembles): with
    ``ScheduleConfig(name="cyclic_cosine", cycles=M)`` the run ends with M snapshots, each at a
    low-rate minimum, for the price of one training run."""

    def __init__(self, cycles: int, epochs: int) -> None:
        if epochs % cycles:
            raise ValueError(f"{epochs} epochs do not split into {cycles} equal cycles")
        self.every = epochs // cycles
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        if trainer.epoch % self.every == 0:
            self.states.append(copy.deepcopy(trainer.model.state_dict()))

    def models(self, like: nn.Module, last: int | None = None) -> list[nn.Module]:
        """The snapshots (the last ``last`` of them) as copies of ``like``."""
        chosen = self.states[-last:] if last else self.states
        out = []
        for state in chosen:
            m = copy.deepcopy(like)
            m.load_state_dict(state)
            out.append(m.eval())
        return out
