"""Trainer overhead against a hand-written loop, and automatic precision against plain fp32.

Part 1: the default digits CNN, fp32 for both, same data, batch size and number of steps. Runs
are interleaved A/B (the order flips every round) and we report medians, because this machine's
timings drift by up to 2x between processes.

Part 2: ResNet-20 trained on the digits upsampled to 32x32 (the CIFAR input size), plain fp32
against what ``precision: auto`` and ``channels_last: auto`` choose, for the same epochs and
seeds: throughput (median over rounds) and final test accuracy (mean over seeds).

    python benchmarks/train_overhead.py [--rounds 7] [--seeds 3] [--epochs 15]
"""

from __future__ import annotations

import argparse
import logging
import statistics

import torch
import torch.nn.functional as F
from common import median, save, table, timed
from torch.utils.data import DataLoader, TensorDataset

from dlforge.data import DataConfig, load_data
from dlforge.models import create_model
from dlforge.train import OptimizerConfig, TrainConfig, Trainer

logging.getLogger("dlforge").setLevel(logging.ERROR)


def plain_loop(model: torch.nn.Module, loader: DataLoader, epochs: int, lr: float) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()


def overhead(rounds: int, epochs: int) -> dict:
    data = load_data(DataConfig(source="digits"), seed=0)
    x, y = data.train
    cfg = TrainConfig(epochs=epochs, precision="fp32", channels_last=False, progress=False,
                      optimizer=OptimizerConfig(name="adamw", lr=1e-3), restore_best=False)  # fmt: skip
    samples = len(y) * epochs
    times: dict[str, list[float]] = {"plain loop": [], "dlforge Trainer": []}
    for r in range(rounds):
        order = ["plain loop", "dlforge Trainer"][:: 1 if r % 2 == 0 else -1]
        for name in order:
            torch.manual_seed(r)
            model = create_model("cnn", data.input_shape, data.num_classes)
            loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True,
                                generator=torch.Generator().manual_seed(r))  # fmt: skip
            if name == "plain loop":
                t, _ = timed(lambda m=model, ld=loader: plain_loop(m, ld, epochs, 1e-3))
            else:
                t, _ = timed(lambda m=model, ld=loader: Trainer(m, cfg).fit(ld))
            times[name].append(samples / t)
    base = median(times["plain loop"])
    ours = median(times["dlforge Trainer"])
    return {
        "rows": [
            {"loop": k, "samples/s (median)": median(v), "runs": len(v)} for k, v in times.items()
        ],
        "overhead_pct": 100 * (base - ours) / base,
    }


def upsampled_digits(size: int = 32):
    data = load_data(DataConfig(source="digits"), seed=0)
    for split in ("train", "val", "test"):
        xs, ys = getattr(data, split)
        setattr(data, split, (F.interpolate(xs, size=(size, size), mode="bilinear",
                                            align_corners=False).contiguous(), ys))  # fmt: skip
    return data


def precision_vs_fp32(seeds: int, epochs: int) -> dict:
    data = upsampled_digits()
    variants = {
        "fp32, NCHW": dict(precision="fp32", channels_last=False),
        "auto": dict(precision="auto", channels_last="auto"),
    }
    speed: dict[str, list[float]] = {k: [] for k in variants}
    acc: dict[str, list[float]] = {k: [] for k in variants}
    chosen = {}
    for seed in range(seeds):
        order = list(variants)[:: 1 if seed % 2 == 0 else -1]
        for name in order:
            torch.manual_seed(seed)
            model = create_model("resnet20", data.input_shape, data.num_classes)
            cfg = TrainConfig(epochs=epochs, batch_size=64, progress=False,
                              optimizer=OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4),
                              **variants[name])  # fmt: skip
            trainer = Trainer(model, cfg)
            gen = torch.Generator().manual_seed(seed)
            history = trainer.fit(data.loader("train", 64, True, gen), data.loader("val", 256))
            # Median of per-epoch throughput, skipping the first (warm-up) epoch.
            speed[name] += [e["samples_per_s"] for e in history.epochs[1:]]
            acc[name].append(trainer.evaluate_loss(data.loader("test", 256))["accuracy"])
            chosen[name] = history.settings
    rows = [
        {"variant": k, "precision": chosen[k]["precision"], "channels_last": chosen[k]["channels_last"],
         "samples/s (median)": median(speed[k]), "test acc (mean)": statistics.mean(acc[k]),
         "test acc (std)": statistics.pstdev(acc[k])}
        for k in variants
    ]  # fmt: skip
    return {
        "rows": rows,
        "speedup": median(speed["auto"]) / median(speed["fp32, NCHW"]),
        "acc": acc,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--overhead-epochs", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=15)
    args = ap.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    part1 = overhead(args.rounds, args.overhead_epochs)
    print("\n## Trainer vs plain loop (digits CNN, fp32, batch 64)\n")
    print(table(part1["rows"]))
    print(f"\nTrainer overhead: {part1['overhead_pct']:+.2f}% (target <= 3%)")
    part2 = precision_vs_fp32(args.seeds, args.epochs)
    print("\n## ResNet-20 training, digits at 32x32: automatic choice vs plain fp32\n")
    print(table(part2["rows"]))
    print(f"\nspeed-up of auto over fp32: {part2['speedup']:.2f}x (target >= 1.8x)")
    save("train_overhead", {"overhead": part1, "precision": part2, "args": vars(args)})


if __name__ == "__main__":
    main()
