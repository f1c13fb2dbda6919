"""Trains a small MLP either as 2 DDP processes (under torchrun) or as one process that sees
exactly the same global batches; writes the final weights. Used by tests/test_runtime.py."""

from __future__ import annotations

import sys

import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler, TensorDataset

from dlforge.train import OptimizerConfig, ScheduleConfig, TrainConfig, Trainer
from dlforge.train.runtime import Runtime

WORLD, PER_RANK, SEED = 2, 16, 7


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 10, generator=g)
    return TensorDataset(x, (x @ torch.randn(10, 3, generator=g)).argmax(1))


class GlobalBatches(Sampler[int]):
    """One process's view of the DDP run: each global batch is rank 0's part then rank 1's,
    drawn from the same DistributedSampler permutations."""

    def __init__(self, data: TensorDataset) -> None:
        self.ranks = [DistributedSampler(data, WORLD, r, shuffle=True, seed=SEED) for r in
                      range(WORLD)]  # fmt: skip
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        for s in self.ranks:
            s.set_epoch(epoch)

    def __iter__(self):  # type: ignore[no-untyped-def]
        parts = [list(s) for s in self.ranks]
        for i in range(0, len(parts[0]), PER_RANK):
            for p in parts:
                yield from p[i : i + PER_RANK]

    def __len__(self) -> int:
        return sum(len(s) for s in self.ranks)


def main(out: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
    cfg = TrainConfig(epochs=3, batch_size=WORLD * PER_RANK, precision="fp32", progress=False,
                      restore_best=False, channels_last=False,
                      optimizer=OptimizerConfig(name="sgd", lr=0.1, momentum=0.9),
                      schedule=ScheduleConfig(name="cosine"))  # fmt: skip
    runtime = Runtime.from_env("cpu")
    trainer = Trainer(model, cfg, runtime=runtime)
    data = dataset()
    if runtime.distributed:
        loader = runtime.shard(DataLoader(data, batch_size=cfg.batch_size), SEED)
    else:
        loader = DataLoader(data, batch_size=cfg.batch_size, sampler=GlobalBatches(data))
    history = trainer.fit(loader)
    if runtime.is_main:
        state = {k: v.contiguous() for k, v in trainer.model.state_dict().items()}
        save_file(state, out, metadata={"loss": str(history.epochs[-1]["train_loss"]),
                                        "processes": str(runtime.world_size)})  # fmt: skip
    runtime.close()


if __name__ == "__main__":
    main(sys.argv[1])
