"""Regularisation, ensembles and cross-validation where over-fitting is real.

Two small-data settings: the digits with 10% of the training split (about 100 images) and
MNIST-1D with 1,000 training signals; the test splits are the usual ones. Every variant is a
recipe (the same code path as ``dlforge run``), trained over seeds, and measured in this run
beside the plain model ("nothing"):

1. Train-test accuracy gap and test accuracy for nothing, weight decay, dropout, augmentation,
   mixup/cutmix, and all together (target: the best combination at least halves the gap and
   adds 3 points of test accuracy).
2. A 5-model ensemble (seeds) against its mean member: accuracy and calibration (ECE); a
   snapshot ensemble (5 cycles of one run) against the 5 independent models, with training time.
3. 5-fold cross-validation mean ± sd beside the single-split estimate.

    python benchmarks/generalisation.py [--seeds 3] [--settings digits mnist1d]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from typing import Any

import torch
from common import save, table

from dlforge.evaluate import metrics as M
from dlforge.evaluate.ensemble import Ensemble
from dlforge.pipeline import prepare
from dlforge.recipe import Recipe, recipe_from_dict
from dlforge.stages.crossval import cross_validate
from dlforge.stages.ensemble import ensemble_members
from dlforge.stages.train import fit

logging.getLogger("dlforge").setLevel(logging.ERROR)

SETTINGS: dict[str, dict[str, Any]] = {
    "digits": {
        "data": {"source": "digits", "train_fraction": 0.1},
        "model": {"name": "cnn", "kwargs": {"channels": [32, 64]}},
        "train": {
            "epochs": 100,
            "batch_size": 32,
            "optimizer": {"name": "adamw", "lr": 3e-3},
            "schedule": {"name": "cosine"},
            "early_stopping": {"monitor": "val_accuracy"},
        },
    },
    "mnist1d": {
        # 3,600 training signals with val_fraction 0.1; 1,000 of them are kept.
        "data": {"source": "mnist1d", "val_fraction": 0.1, "train_fraction": 1000 / 3600},
        "model": {
            "name": "cnn",
            "kwargs": {
                "channels": [32, 64, 64],
                "kernel_size": 5,
                "stride": [1, 2, 2],
                "pool": "flatten",
            },
        },
        "train": {
            "epochs": 60,
            "batch_size": 64,
            "optimizer": {"name": "adamw", "lr": 3e-3},
            "schedule": {"name": "onecycle"},
            "early_stopping": {"monitor": "val_accuracy"},
        },
    },
}
# Each regulariser as recipe overrides (per setting where the data differ).
AUGMENT = {
    "digits": {"image": {"crop_padding": 1, "rotation": 10.0, "translate": 0.1, "erasing": 0.25}},
    "mnist1d": {"signal": {"shift": 3, "scale": 0.1, "noise": 0.05, "time_warp": 0.1}},
}
MIX = {"mix": {"mixup_alpha": 0.2, "cutmix_alpha": 1.0}}


def variants(setting: str) -> dict[str, list[str]]:
    wd = ["train.optimizer.weight_decay=0.05"]
    drop = ["model.kwargs.dropout=0.3", "model.kwargs.spatial_dropout=0.1"]
    aug = [f"data.augment={AUGMENT[setting]}"]
    mix = [f"data.augment={MIX}"]
    both = [f"data.augment={ ({**AUGMENT[setting], **MIX}) }"]
    return {
        "nothing": [],
        "weight decay": wd,
        "dropout": drop,
        "augmentation": aug,
        "mixup/cutmix": mix,
        "all together": wd + drop + both,
    }


def recipe_for(setting: str, seed: int, overrides: list[str] | None = None) -> Recipe:
    return recipe_from_dict({**SETTINGS[setting], "seed": seed}, overrides)


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model.eval()(x).argmax(1) == y).float().mean())


def scores(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        proba = torch.softmax(model.eval()(x).double(), 1).numpy()
    labels = y.numpy()
    return {
        "accuracy": M.accuracy_score(labels, proba.argmax(1)),
        "ece": M.expected_calibration_error(labels, proba),
    }


def regularisers(setting: str, seeds: int) -> list[dict[str, Any]]:
    rows = []
    for name, overrides in variants(setting).items():
        train_acc, test_acc = [], []
        for seed in range(seeds):
            recipe = recipe_for(setting, seed, overrides)
            data, model = prepare(recipe)
            trained = fit(recipe, data, model).model
            train_acc.append(accuracy(trained, *data.train))
            test_acc.append(accuracy(trained, *data.test))
        gaps = [a - b for a, b in zip(train_acc, test_acc)]
        rows.append({
            "setting": setting,
            "regularisation": name,
            "train_accuracy": statistics.mean(train_acc),
            "test_accuracy": statistics.mean(test_acc),
            "test_sd": statistics.stdev(test_acc) if seeds > 1 else 0.0,
            "gap_points": 100 * statistics.mean(gaps),
        })  # fmt: skip
        print(f"{setting} {name}: done", flush=True)
    base = rows[0]
    for r in rows:
        r["gap_x_nothing"] = r["gap_points"] / base["gap_points"] if base["gap_points"] else None
        r["test_gain_points"] = 100 * (r["test_accuracy"] - base["test_accuracy"])
    return rows


def ensembles(setting: str, seeds: int) -> list[dict[str, Any]]:
    rows = []
    for kind in ("seeds", "snapshot"):
        single_acc, single_ece, ens_acc, ens_ece, secs = [], [], [], [], []
        for seed in range(seeds):
            recipe = recipe_for(setting, seed, [f"ensemble.kind={kind}", "ensemble.members=5"])
            data, _ = prepare(recipe)
            start = time.perf_counter()
            members = ensemble_members(recipe, data)
            secs.append(time.perf_counter() - start)
            x, y = data.test
            member = [scores(m, x, y) for m in members]
            single_acc.append(statistics.mean(s["accuracy"] for s in member))
            single_ece.append(statistics.mean(s["ece"] for s in member))
            ens = scores(Ensemble(members), x, y)
            ens_acc.append(ens["accuracy"])
            ens_ece.append(ens["ece"])
        rows.append({
            "setting": setting,
            "ensemble": "5 seeds" if kind == "seeds" else "snapshot (5 cycles, one run)",
            "mean_member_accuracy": statistics.mean(single_acc),
            "ensemble_accuracy": statistics.mean(ens_acc),
            "gain_points": 100 * (statistics.mean(ens_acc) - statistics.mean(single_acc)),
            "mean_member_ece": statistics.mean(single_ece),
            "ensemble_ece": statistics.mean(ens_ece),
            "train_seconds": statistics.mean(secs),
        })  # fmt: skip
        print(f"{setting} ensemble {kind}: done", flush=True)
    rows[1]["train_seconds_x_seeds"] = rows[1]["train_seconds"] / rows[0]["train_seconds"]
    return rows


def crossvalidation(setting: str) -> dict[str, Any]:
    recipe = recipe_for(setting, 0, ["crossval.folds=5"])
    cv = cross_validate(recipe)
    data, model = prepare(recipe)
    single = accuracy(fit(recipe, data, model).model, *data.test)
    acc = cv["summary"]["accuracy"]
    print(f"{setting} cross-validation: done", flush=True)
    return {
        "setting": setting,
        "cv_mean": acc["mean"],
        "cv_sd": acc["std"],
        "cv_min": acc["min"],
        "cv_max": acc["max"],
        "single_split_test": single,
        "failed_folds": len(cv["failed"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--settings", nargs="*", default=list(SETTINGS))
    args = ap.parse_args()
    torch.set_num_threads(2)
    out: dict[str, Any] = {"regularisers": [], "ensembles": [], "crossval": []}
    for setting in args.settings:
        out["regularisers"] += regularisers(setting, args.seeds)
        out["ensembles"] += ensembles(setting, args.seeds)
        out["crossval"].append(crossvalidation(setting))
    print(f"\n## Regularisation ({args.seeds} seeds; gap = train - test accuracy)\n")
    print(table(out["regularisers"]))
    for setting in args.settings:
        rows = [r for r in out["regularisers"] if r["setting"] == setting]
        best = max(rows[1:], key=lambda r: r["test_accuracy"])
        halved = best["gap_points"] <= rows[0]["gap_points"] / 2
        gained = best["test_gain_points"] >= 3
        print(f"\n{setting}: best = {best['regularisation']}: gap {best['gap_points']:.2f} points "
              f"(nothing {rows[0]['gap_points']:.2f}; halved: {'yes' if halved else 'NO'}), "
              f"test {best['test_gain_points']:+.2f} points (>= 3: {'yes' if gained else 'NO'})")  # fmt: skip
    print(f"\n## Ensembles ({args.seeds} seeds)\n")
    print(table(out["ensembles"]))
    print("\n## 5-fold cross-validation (seed 0) beside the single split\n")
    print(table(out["crossval"]))
    save("generalisation", {**out, "seeds": args.seeds, "settings": SETTINGS})


if __name__ == "__main__":
    main()
