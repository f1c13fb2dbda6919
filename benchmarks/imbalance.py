"""Class imbalance: every method against plain cross-entropy on long-tailed digits and MNIST-1D,
and SMOTE and class weights on a 1%-positive table.

Long-tailed training splits (Cui et al.'s exponential profile, ratio 10 and 100; validation and
test balanced), 3 seeds, the shipped recipes' models (digits CNN, 30 epochs; MNIST-1D CNN, 40
epochs instead of the recipe's 60, to fit the time). Every method goes through the recipe path
(`data.imbalance`, `train.loss`, `train.decoupled`, `train.decision`, `ensemble.kind: easy`), as
`dlforge run` would run it. Reported: balanced accuracy (= mean recall = accuracy on the
balanced test split), macro-F1, head and tail recall (thirds of the classes by training count),
and the change against cross-entropy trained in the same run.

    python benchmarks/imbalance.py [--seeds 3] [--datasets digits mnist1d] [--ratios 10 100]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import RESULTS, save, table
from sklearn.metrics import average_precision_score, f1_score, precision_recall_curve

from dlforge.evaluate.ensemble import Ensemble
from dlforge.evaluate.imbalance import imbalance_report
from dlforge.pipeline import prepare
from dlforge.recipe import load_recipe
from dlforge.stages.ensemble import ensemble_members
from dlforge.stages.train import fit
from dlforge.train.checkpoint import atomic_write_json

logging.getLogger("dlforge").setLevel(logging.ERROR)

RECIPES = {
    "digits": ("recipes/default.yaml", ["train.epochs=30"]),
    "mnist1d": ("recipes/mnist1d.yaml", ["train.epochs=40"]),
}
METHODS: dict[str, list[str]] = {
    "cross-entropy": [],
    "weighted CE (inverse)": ["train.loss.name=weighted"],
    "weighted CE (effective number)": ["train.loss.name=weighted", "train.loss.weights=effective"],
    "focal (gamma 2)": ["train.loss.name=focal"],
    "LDAM-DRW": ["train.loss.name=ldam", "train.loss.drw_epoch=DRW"],
    "logit-adjusted loss": ["train.loss.name=logit_adjusted"],
    "CE + post-hoc logit adjustment": ["train.decision.logit_adjust_tau=1.0"],
    "over-sampling": ["data.imbalance.sampler=over"],
    "under-sampling": ["data.imbalance.sampler=under"],
    "class-balanced sampler": ["data.imbalance.sampler=balanced"],
    "decoupled (SMOTE on embeddings)": [
        "train.decoupled.enabled=true",
        "train.decoupled.k_neighbors=1",
    ],
    "EasyEnsemble (5)": ["ensemble.enabled=true", "ensemble.kind=easy", "ensemble.members=5"],
}


def scores(model: torch.nn.Module, data: Any) -> dict[str, Any]:
    x, y = data.test
    with torch.no_grad():
        pred = model.eval()(x).argmax(1).numpy()
    labels = y.numpy()
    k = data.num_classes
    recall = [float(np.mean(pred[labels == c] == c)) for c in range(k)]
    report = imbalance_report(recall, np.bincount(labels, minlength=k),
                              np.bincount(data.train[1].numpy(), minlength=k))  # fmt: skip
    return {
        "balanced_accuracy": float(np.mean(recall)),
        "macro_f1": float(f1_score(labels, pred, average="macro")),
        "head_recall": report["head_recall"],
        "tail_recall": report["tail_recall"],
        "recall": recall,
    }


def one(dataset: str, ratio: float, method: str, seed: int) -> dict[str, Any]:
    path, base = RECIPES[dataset]
    epochs = int(base[0].split("=")[1])
    overrides = [o.replace("DRW", str(int(epochs * 2 / 3))) for o in METHODS[method]]
    recipe = load_recipe(path, [*base, f"seed={seed}", f"data.imbalance.long_tail_ratio={ratio}",
                                "train.progress=false", *overrides])  # fmt: skip
    start = time.perf_counter()
    data, model = prepare(recipe)
    if recipe.ensemble.enabled:  # EasyEnsemble: members on their own balanced under-samples
        members = ensemble_members(recipe, data)
        model = Ensemble(members, "soft")
    else:
        model = fit(recipe, data, model).model
    return {**scores(model, data), "seconds": time.perf_counter() - start}


PARTIAL = RESULTS / "imbalance.partial.json"


def imbalance_table(args: argparse.Namespace) -> list[dict[str, Any]]:
    done: dict[str, Any] = json.loads(PARTIAL.read_text()) if PARTIAL.exists() else {}
    rows = []
    for dataset in args.datasets:
        for ratio in args.ratios:
            base_runs = None
            for method in args.methods:
                runs = []
                for s in range(args.seeds):  # finished runs are kept: a crash loses one run
                    key = f"{dataset}/{ratio:g}/{method}/{s}"
                    if key not in done:
                        done[key] = one(dataset, ratio, method, s)
                        atomic_write_json(PARTIAL, done)
                    runs.append(done[key])
                if method == "cross-entropy":
                    base_runs = runs
                row: dict[str, Any] = {"data": dataset, "ratio": ratio, "method": method}
                for key in ("balanced_accuracy", "macro_f1", "head_recall", "tail_recall"):
                    values = [100 * r[key] for r in runs]
                    row[key] = statistics.mean(values)
                    if len(values) > 1:
                        row[key + "_sd"] = statistics.stdev(values)
                    if base_runs is not None:
                        row[key + "_vs_ce"] = row[key] - statistics.mean(
                            100 * r[key] for r in base_runs
                        )
                row["seconds"] = statistics.mean(r["seconds"] for r in runs)
                row["recall_per_class"] = [statistics.mean(r["recall"][c] for r in runs)
                                           for c in range(len(runs[0]["recall"]))]  # fmt: skip
                rows.append(row)
                print(f"{dataset} ratio {ratio:g} {method}: balanced accuracy "
                      f"{row['balanced_accuracy']:.1f} ({row.get('balanced_accuracy_vs_ce', 0):+.1f} "
                      f"vs CE), tail recall {row['tail_recall']:.1f}", flush=True)  # fmt: skip
    return rows


# ---- the tabular case -------------------------------------------------------------------------


def recall_at_precision(y: np.ndarray, score: np.ndarray, precision: float) -> float:
    p, r, _ = precision_recall_curve(y, score)
    ok = r[p >= precision]
    return float(ok.max()) if len(ok) else 0.0


def tabular(seeds: int) -> list[dict[str, Any]]:
    methods = {
        "plain": [],
        "class weights (inverse)": ["train.loss.name=weighted"],
        "SMOTE": ["data.imbalance.smote=smote"],
        "Borderline-SMOTE": ["data.imbalance.smote=borderline"],
        "ADASYN": ["data.imbalance.smote=adasyn"],
        "plain + F1 threshold": ["train.decision.threshold=f1"],
    }
    rows = []
    for method, overrides in methods.items():
        runs = []
        for seed in range(seeds):
            recipe = load_recipe(None, [
                "data.source=synthetic", "data.synthetic.n_samples=20000",
                "data.synthetic.n_classes=2", "data.synthetic.weights=[0.99,0.01]",
                "data.synthetic.n_features=20", "data.synthetic.n_informative=6",
                "model.name=mlp", "train.epochs=20", "train.batch_size=256",
                "train.progress=false", f"seed={seed}", *overrides,
            ])  # fmt: skip
            data, model = prepare(recipe)
            trainer = fit(recipe, data, model)
            x, y = data.test
            with torch.no_grad():
                proba = torch.softmax(trainer.model.eval()(x), 1)[:, 1].numpy()
            labels = y.numpy()
            decision = trainer.notes.get("decision") or {}
            pred = proba >= decision.get("threshold", 0.5)
            runs.append({
                "average_precision": average_precision_score(labels, proba),
                "recall_at_p50": recall_at_precision(labels, proba, 0.5),
                "recall_at_p80": recall_at_precision(labels, proba, 0.8),
                "f1_at_decision": f1_score(labels, pred),
                "recall_at_decision": float(pred[labels == 1].mean()),
            })  # fmt: skip
        row: dict[str, Any] = {"method": method}
        for key in runs[0]:
            row[key] = statistics.mean(r[key] for r in runs)
        rows.append(row)
        print(f"table 1% positives {method}: AP {row['average_precision']:.3f}, recall at "
              f"precision 0.5 {row['recall_at_p50']:.3f}", flush=True)  # fmt: skip
    return rows


def plot_recalls(rows: list[dict[str, Any]], path: Path) -> Path:
    """Per-class test recall of every method, a panel per dataset and ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = sorted({(r["data"], r["ratio"]) for r in rows})
    fig, axes = plt.subplots(len(cases), 1, figsize=(11, 3.2 * len(cases)), squeeze=False)
    for ax, (dataset, ratio) in zip(axes[:, 0], cases):
        part = [r for r in rows if r["data"] == dataset and r["ratio"] == ratio]
        k = len(part[0]["recall_per_class"])
        width = 0.8 / len(part)
        for i, r in enumerate(part):
            x = np.arange(k) + (i - len(part) / 2) * width
            ax.bar(x, r["recall_per_class"], width, label=r["method"], color=plt.cm.tab20(i))
        ax.set(title=f"{dataset}, ratio {ratio:g} (class 0 the head, class {k - 1} the tail)",
               xlabel="class", ylabel="test recall", xticks=np.arange(k), ylim=(0, 1.02))  # fmt: skip
    axes[0, 0].legend(fontsize=6, ncol=4, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--datasets", nargs="*", default=["digits", "mnist1d"])
    parser.add_argument("--ratios", nargs="*", type=float, default=[10, 100])
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--skip-tabular", action="store_true")
    args = parser.parse_args()
    if "cross-entropy" not in args.methods:
        args.methods.insert(0, "cross-entropy")
    torch.set_num_threads(2)
    out: dict[str, Any] = {"args": vars(args)}
    out["long_tailed"] = rows = imbalance_table(args)
    cols = ["data", "ratio", "method", "balanced_accuracy", "balanced_accuracy_vs_ce", "macro_f1",
            "head_recall", "head_recall_vs_ce", "tail_recall", "tail_recall_vs_ce", "seconds"]  # fmt: skip
    print("\n## Long-tailed (means over seeds, points)\n")
    print(table([{c: r.get(c) for c in cols} for r in rows]))
    for dataset in args.datasets:
        for ratio in args.ratios:
            part = [r for r in rows if r["data"] == dataset and r["ratio"] == ratio]
            best = max(part, key=lambda r: r["balanced_accuracy"])
            print(f"\n{dataset} ratio {ratio:g}: best {best['method']} "
                  f"{best['balanced_accuracy']:.1f} ({best.get('balanced_accuracy_vs_ce', 0):+.1f} "
                  "points of balanced accuracy over cross-entropy)")  # fmt: skip
    print(f"per-class recall figure: {plot_recalls(rows, RESULTS / 'imbalance_recall.png')}")
    if not args.skip_tabular:
        out["tabular"] = tab = tabular(args.seeds)
        print("\n## 1% positives (make_classification, MLP; means over seeds)\n")
        print(table(tab))
    print(f"\nraw numbers: {save('imbalance', out)}")


if __name__ == "__main__":
    main()
