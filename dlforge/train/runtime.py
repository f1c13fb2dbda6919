"""Where training runs: one process, or data-parallel processes started by ``torchrun``.

``Runtime.from_env()`` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``);
with more than one process it joins the process group (NCCL on GPUs, gloo on CPUs), pins each
process to its device, and the Trainer then wraps the model in ``DistributedDataParallel``, sums
its metrics over processes and lets only the first process write files. The techniques never
see any of it: a step calls the model, DDP averages the gradients.

    torchrun --nproc-per-node 2 -m dlforge train recipes/default.yaml
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 4 \\
        --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m dlforge train recipe.yaml
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import (
    DataLoader,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from dlforge.config import ConfigError

log = logging.getLogger("dlforge.train")


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: the process's GPU when CUDA is there, else the CPU; or an explicit device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"asks for {name!r} but CUDA is not available here", "device")
    return device


# Set when a distributed run closed its process group: training is over, and what follows
# (evaluation, compression fine-tuning, QAT) runs in the first process alone.
_GROUP_CLOSED = False


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str | torch.device = "auto") -> Runtime:
        """One process, or this process's place in a torchrun job (joining its group)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        dev = device if isinstance(device, torch.device) else resolve_device(device, local)
        if _GROUP_CLOSED and not dist.is_initialized():
            return cls(dev, rank, 1, local)  # after the distributed training: one process
        if world > 1 and not dist.is_initialized():
            backend = "nccl" if dev.type == "cuda" else "gloo"
            if dev.type == "cuda":
                torch.cuda.set_device(dev)
            dist.init_process_group(backend=backend)
        return cls(dev, rank if world > 1 else 0, world, local)

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the training forward runs through: DDP when distributed."""
        if not self.distributed:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over processes (the process's own ``t`` when alone)."""
        if self.distributed:
            t = t.clone()
            dist.all_reduce(t)
        return t

    def gather(self, obj: Any) -> list[Any]:
        """Every process's ``obj``, in rank order (a list of one when alone)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def shard(self, loader: DataLoader, seed: int, shuffle: bool = True) -> DataLoader:
        """This process's share of ``loader``'s data, ``loader.batch_size / world`` a batch, so
        that the global batch stays what the recipe says."""
        if not self.distributed:
            return loader
        own_shard = getattr(loader.sampler, "shard", None)  # dlforge's imbalance samplers
        if not callable(own_shard) and not isinstance(
            loader.sampler, SequentialSampler | RandomSampler
        ):
            raise ConfigError(
                f"a {type(loader.sampler).__name__} cannot be sharded over processes (bagging "
                "runs in one process)",
                "train",
            )
        batch = loader.batch_size or 1
        if batch % self.world_size:
            raise ConfigError(
                f"batch size {batch} does not split over {self.world_size} processes",
                "train.batch_size",
            )
        sampler: Sampler[int]
        if callable(own_shard):  # every process draws the same epoch and keeps its share
            sampler = own_shard(self.world_size, self.rank)
        else:
            sampler = DistributedSampler(
                loader.dataset, self.world_size, self.rank, shuffle=shuffle, seed=seed
            )
        return DataLoader(
            loader.dataset,
            batch_size=batch // self.world_size,
            sampler=sampler,
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
        )

    def close(self) -> None:
        global _GROUP_CLOSED
        if self.distributed and dist.is_initialized():
            # Every process arrives before the group goes: a process destroying it while another
            # is still writing its checkpoint could abort that one (seen with gloo). A process
            # that died is waited for a minute at most.
            try:
                if dist.get_backend() == "gloo":
                    dist.monitored_barrier(timeout=timedelta(seconds=60))
                else:
                    dist.barrier()
            except RuntimeError as exc:
                log.warning("processes did not all reach the end of training: %s", exc)
            dist.destroy_process_group()
            _GROUP_CLOSED = True


class GlobalBatchSampler(Sampler[int]):
    """One process reading, batch after batch, what ``world`` DDP processes read together (rank
    0's share, then rank 1's, ...) from the same ``DistributedSampler`` shuffles: the reference a
    distributed run is checked against (``benchmarks/ddp.py``, ``tests/test_runtime.py``)."""

    def __init__(self, dataset: Any, world: int, per_rank: int, seed: int = 0) -> None:
        self.ranks: list[DistributedSampler[int]] = [DistributedSampler(dataset, world, r, shuffle=True, seed=seed)
                      for r in range(world)]  # fmt: skip
        self.per_rank = per_rank

    def set_epoch(self, epoch: int) -> None:
        for s in self.ranks:
            s.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        parts = [list(s) for s in self.ranks]
        for i in range(0, len(parts[0]), self.per_rank):
            for part in parts:
                yield from part[i : i + self.per_rank]

    def __len__(self) -> int:
        return sum(len(s) for s in self.ranks)
