"""Data-parallel training on this CPU: 2 gloo processes under torchrun against 1 process.

The digits CNN trains for a few epochs with the same global batch (64) either as one process or
as two DDP processes of 32 each, the single process reading exactly the batches the two
processes read together. Reported: training throughput (samples/s over the whole global batch,
median over epochs) and the largest weight difference at the end (parity; float summation order
differs, so equality is to about 1e-6). Two processes on a 2-core machine share the cores a
single process already uses (torch threads 1 per process against 2 for the single one), so no
speed-up is expected here; the figure is the cost of the machinery.

    python benchmarks/ddp.py [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from common import save, table
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, TensorDataset

WORLD, PER_RANK, SEED = 2, 32, 0


def worker(out: str, epochs: int) -> None:
    from dlforge.data import DataConfig, load_data
    from dlforge.models import create_model
    from dlforge.train import OptimizerConfig, TrainConfig, Trainer
    from dlforge.train.runtime import GlobalBatchSampler, Runtime

    runtime = Runtime.from_env("cpu")
    torch.set_num_threads(2 // runtime.world_size)
    data = load_data(DataConfig(source="digits"), seed=0)
    torch.manual_seed(0)
    model = create_model(
        "cnn", data.input_shape, data.num_classes, channels=[32, 64], batch_norm=False
    )  # fmt: skip  (BN statistics are per process in DDP)
    cfg = TrainConfig(epochs=epochs, batch_size=WORLD * PER_RANK, precision="fp32",
                      channels_last=False, progress=False, restore_best=False,
                      optimizer=OptimizerConfig(name="sgd", lr=0.05, momentum=0.9))  # fmt: skip
    ds = TensorDataset(*data.train)
    trainer = Trainer(model, cfg, runtime=runtime)
    if runtime.distributed:
        loader = runtime.shard(DataLoader(ds, batch_size=cfg.batch_size), SEED)
    else:
        loader = DataLoader(
            ds, batch_size=cfg.batch_size, sampler=GlobalBatchSampler(ds, WORLD, PER_RANK, SEED)
        )
    history = trainer.fit(loader)
    if runtime.is_main:
        # Each process's samples/s counts the global batch (metrics are summed over processes).
        speeds = [e["samples_per_s"] for e in history.epochs[1:]]
        state = {k: v.contiguous() for k, v in trainer.model.state_dict().items()}
        save_file(state, out, metadata={"samples_per_s": json.dumps(speeds)})
    runtime.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.epochs)
        return
    here = str(Path(__file__).resolve())
    env = {**os.environ, "PYTHONPATH": str(Path(here).parent)}
    rows, weights = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for procs in (1, 2, 1, 2):  # interleaved: the machine's drift hits both alike
            out = f"{tmp}/w{procs}.safetensors"
            cmd = [sys.executable, here, "--epochs", str(args.epochs), "--worker", out]
            if procs > 1:
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       "--nproc-per-node", str(procs), *cmd[1:]]  # fmt: skip
            subprocess.run(cmd, check=True, env=env, capture_output=True)
            from safetensors import safe_open

            with safe_open(out, "pt") as fh:
                speeds = json.loads(fh.metadata()["samples_per_s"])
            rows.append({"processes": procs, "samples_per_s": statistics.median(speeds)})
            weights[procs] = load_file(out)
    diff = max((weights[1][k] - weights[2][k]).abs().max().item() for k in weights[1])
    summary = []
    for procs in (1, 2):
        speed = statistics.median(r["samples_per_s"] for r in rows if r["processes"] == procs)
        summary.append({"processes": procs, "samples_per_s": speed})
    for r in summary:
        r["throughput_x"] = r["samples_per_s"] / summary[0]["samples_per_s"]
    print(f"\n## DDP on this CPU (gloo), digits CNN, global batch {WORLD * PER_RANK}\n")
    print(table(summary))
    print(f"\nlargest weight difference after {args.epochs} epochs, 2 processes vs 1: {diff:.2e}")
    save("ddp", {"rows": summary, "runs": rows, "max_weight_diff": diff, "epochs": args.epochs})


if __name__ == "__main__":
    main()
