"""Trains a small MLP either as 2 DDP processes (under torchrun) or as one process that sees
exactly the same global batches; writes the final weights. Used by tests/test_runtime.py."""

from __future__ import annotations

import argparse
import os

import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dlforge.train import Callback, OptimizerConfig, ScheduleConfig, TrainConfig, Trainer
from dlforge.train.runtime import GlobalBatchSampler, Runtime

WORLD, PER_RANK, SEED = 2, 16, 7


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 10, generator=g)
    return TensorDataset(x, (x @ torch.randn(10, 3, generator=g)).argmax(1))


class PowerCut(Callback):
    """Ends the process in the middle of epoch ``at`` (1-based), as a kill would."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_end(self, trainer: Trainer, out: object, index: int) -> None:
        if trainer.epoch + 1 == self.at and index == 2:
            os._exit(3)  # no clean-up, no flush: like SIGKILL


def main(
    out: str,
    epochs: int = 3,
    run_dir: str | None = None,
    resume: bool = False,
    dropout: float = 0,
    cut: int = 0,
) -> None:
    torch.set_num_threads(1)  # torchrun gives each process one thread: the same GEMM partitions
    torch.manual_seed(0)
    # Dropout draws from each process's generator: parity with one process needs it off; the
    # resume test switches it on, since every process's RNG state must come back.
    model = nn.Sequential(nn.Linear(10, 32), nn.Dropout(dropout), nn.ReLU(), nn.Linear(32, 3))
    cfg = TrainConfig(epochs=epochs, batch_size=WORLD * PER_RANK, precision="fp32", progress=False,
                      restore_best=False, channels_last=False,
                      optimizer=OptimizerConfig(name="sgd", lr=0.1, momentum=0.9),
                      schedule=ScheduleConfig(name="cosine"))  # fmt: skip
    runtime = Runtime.from_env("cpu")
    cuts = [PowerCut(cut)] if cut else []
    trainer = Trainer(model, cfg, runtime=runtime, out_dir=run_dir, callbacks=cuts)
    data = dataset()
    if runtime.distributed:
        loader = runtime.shard(DataLoader(data, batch_size=cfg.batch_size), SEED)
    else:
        loader = DataLoader(
            data, batch_size=cfg.batch_size, sampler=GlobalBatchSampler(data, WORLD, PER_RANK, SEED)
        )
    last = f"{run_dir}/checkpoints/last.safetensors" if resume else None
    history = trainer.fit(loader, resume=last)
    if runtime.is_main:
        state = {k: v.contiguous() for k, v in trainer.model.state_dict().items()}
        save_file(state, out, metadata={"loss": str(history.epochs[-1]["train_loss"]),
                                        "processes": str(runtime.world_size)})  # fmt: skip
    runtime.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("epochs", type=int, nargs="?", default=3)
    ap.add_argument("run_dir", nargs="?", default=None)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--cut", type=int, default=0, help="die in this epoch (1-based)")
    args = ap.parse_args()
    main(args.out, args.epochs, args.run_dir, args.resume, args.dropout, args.cut)
