"""Transformers and attention: accuracy, the attention kernels, int8 and head pruning, measured.

Sections (``--only`` picks some; each measures its baseline in the same run):
- ``accuracy``: the transformer recipe (MNIST-1D as 10 patches of 4 samples) against the CNN
  recipe, over seeds: test accuracy and training throughput (samples/s over the whole run);
  the ViT on digits beside the digits CNN.
- ``attention``: forward time of dlforge's multi-head attention against nn.MultiheadAttention
  and against the bare projections + scaled_dot_product_attention, at sequence lengths 64-1024;
  and with attention weights returned (the explicit path).
- ``int8``: dlforge PTQ (QDQ ONNX) on ONNX Runtime for the trained transformer and ViT:
  accuracy drop and throughput against eager fp32 and fp32 ONNX Runtime at batch 64, and which
  kernels ran in int8.
- ``pruning``: attention heads (Michel et al. importance) and feed-forward units of the trained
  transformer removed, fine-tuned; attention MACs removed, accuracy and ONNX Runtime throughput
  against the unpruned model.

    python benchmarks/transformers.py [--seeds 3] [--only accuracy attention int8 pruning]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from common import RESULTS, save, table
from torch import nn

from dlforge.compress.quantize import QuantConfig, ptq
from dlforge.deploy.bench import BenchConfig, Variant, add_ratios, benchmark, ort_runner
from dlforge.deploy.export import export_onnx
from dlforge.deploy.runtime import kernels
from dlforge.models.attention import MultiHeadAttention
from dlforge.pipeline import run
from dlforge.recipe import load_recipe
from dlforge.stages.compress import finetune
from dlforge.train.config import FineTune

logging.getLogger("dlforge").setLevel(logging.ERROR)
ROOT = Path(__file__).resolve().parents[1]
THREADS = 2
CASES = {
    # name: (recipe, overrides)
    "mnist1d_transformer": ("recipes/transformer.yaml", []),
    "mnist1d_cnn": ("recipes/mnist1d.yaml", []),
    "digits_vit": (
        "recipes/default.yaml",
        [
            "model.name=vit",
            "model.kwargs={patch: 2, dim: 64, depth: 3, heads: 4}",
            "train.epochs=60",
            "train.optimizer.name=adamw",
            "train.optimizer.lr=1e-3",
            "train.optimizer.weight_decay=0.05",
        ],
    ),
    "digits_cnn": ("recipes/default.yaml", []),
}
NO_STAGES = ["quantize.enabled=false", "compress.enabled=false", "bench.enabled=false",
             "report.enabled=false"]  # fmt: skip


def train_case(name: str, seed: int, out: str) -> Any:
    recipe_file, overrides = CASES[name]
    recipe = load_recipe(ROOT / recipe_file, [*overrides, *NO_STAGES, f"seed={seed}",
                                              f"output_dir={out}", f"name={name}-{seed}",
                                              "train.progress=false"])  # fmt: skip
    start = time.perf_counter()
    result = run(recipe)
    seconds = time.perf_counter() - start
    epochs = result.metrics["train"]["epochs"]
    return result, {
        "accuracy": result.metrics["evaluate"]["summary"]["accuracy"],
        "epochs": len(epochs),
        "train_samples_per_s": statistics.median(e["samples_per_s"] for e in epochs),
        "run_seconds": seconds,
    }


def accuracy_section(seeds: int, keep: dict[str, Any], names: list[str]) -> dict[str, Any]:
    rows, raw = [], {}
    with tempfile.TemporaryDirectory() as out:
        for name in names:
            runs = []
            for seed in range(seeds):
                result, m = train_case(name, seed, out)
                runs.append(m)
                if seed == 0:
                    keep[name] = result
            raw[name] = runs
            accs = [r["accuracy"] for r in runs]
            rows.append({
                "model": name,
                "accuracy (mean)": statistics.mean(accs),
                "std": statistics.pstdev(accs),
                "min": min(accs),
                "train samples/s": statistics.median(r["train_samples_per_s"] for r in runs),
                "epochs run": statistics.mean(r["epochs"] for r in runs),
            })  # fmt: skip
    by = {r["model"]: r for r in rows}
    for model, base in (("mnist1d_transformer", "mnist1d_cnn"), ("digits_vit", "digits_cnn")):
        if model in by and base in by:
            by[model]["throughput vs CNN"] = (
                by[model]["train samples/s"] / by[base]["train samples/s"]
            )
    print(f"\n## Accuracy and training throughput, {seeds} seeds\n\n{table(rows)}")
    t = by["mnist1d_transformer"]["accuracy (mean)"]
    print(f"\nMNIST-1D transformer {t:.4f} (target >= 0.94: {'met' if t >= 0.94 else 'NOT met'})")
    return {"rows": rows, "runs": raw}


def _time(fn: Any, x: torch.Tensor, rounds: int = 7) -> float:
    """Median seconds of one call, over rounds of enough calls to last ~0.2 s."""
    with torch.no_grad():
        for _ in range(3):
            fn(x)
        per_round = []
        for _ in range(rounds):
            start, n = time.perf_counter(), 0
            while n < 3 or time.perf_counter() - start < 0.2:
                fn(x)
                n += 1
            per_round.append((time.perf_counter() - start) / n)
    return statistics.median(per_round)


def attention_section() -> dict[str, Any]:
    torch.manual_seed(0)
    dim, heads, batch = 128, 8, 4
    ref = nn.MultiheadAttention(dim, heads, batch_first=True).eval()
    ours = MultiHeadAttention.from_torch(ref).eval()
    ours.default_need_weights = False

    def bare(x: torch.Tensor) -> torch.Tensor:  # the projections + the fused kernel, by hand
        b, n, _ = x.shape
        q, k, v = (p(x).view(b, n, heads, -1).transpose(1, 2)
                   for p in (ours.q_proj, ours.k_proj, ours.v_proj))  # fmt: skip
        out = F.scaled_dot_product_attention(q, k, v)
        return ours.out_proj(out.transpose(1, 2).reshape(b, n, dim))

    candidates = {
        "projections + SDPA (bare)": bare,
        "dlforge MultiHeadAttention": lambda x: ours(x)[0],
        "nn.MultiheadAttention": lambda x: ref(x, x, x, need_weights=False)[0],
        "dlforge, weights returned": lambda x: ours(x, need_weights=True)[0],
        "nn.MultiheadAttention, weights returned": lambda x: ref(x, x, x)[0],
    }
    rows = []
    for length in (64, 128, 256, 512, 1024):
        x = torch.randn(batch, length, dim)
        times: dict[str, list[float]] = {k: [] for k in candidates}
        for r in range(3):  # interleaved, alternating order
            for name, fn in list(candidates.items())[:: 1 if r % 2 == 0 else -1]:
                times[name].append(_time(fn, x, rounds=3))
        med = {k: statistics.median(v) for k, v in times.items()}
        base = med["projections + SDPA (bare)"]
        row: dict[str, Any] = {"length": length}
        for name, t in med.items():
            row[f"{name} ms"] = 1e3 * t
        row["dlforge / bare"] = med["dlforge MultiHeadAttention"] / base
        row["dlforge / nn.MHA"] = med["dlforge MultiHeadAttention"] / med["nn.MultiheadAttention"]
        rows.append(row)
    print(f"\n## Multi-head attention forward, batch {batch}, dim {dim}, {heads} heads\n")
    print(table(rows))
    worst = max(r["dlforge / bare"] for r in rows)
    print(f"\nworst dlforge / bare SDPA: {worst:.3f} (target <= 1.10: "
          f"{'met' if worst <= 1.10 else 'NOT met'})")  # fmt: skip
    return {"rows": rows, "dim": dim, "heads": heads, "batch": batch}


def _accuracy(logits: np.ndarray, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y.numpy()).mean())


def int8_section(keep: dict[str, Any]) -> dict[str, Any]:
    from dlforge.deploy.bench import torch_runner

    out: dict[str, Any] = {}
    for name in ("mnist1d_transformer", "digits_vit"):
        result = keep[name]
        model, data = result.model.eval(), result.data
        x, y = data.test
        calib = [data.train[0][i : i + 64] for i in range(0, 64 * 16, 64)]
        plan = ptq(model, calib, QuantConfig())
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = export_onnx(model, x[:1], Path(tmp) / "fp32.onnx")
            int8 = export_onnx(plan.model, x[:1], Path(tmp) / "int8.onnx")
            with torch.no_grad():
                eager = model(x).numpy()
            acc = {
                "eager fp32": _accuracy(eager, y),
                "onnxruntime fp32": _accuracy(ort_runner(fp32, THREADS)(x.numpy()), y),
                "onnxruntime int8": _accuracy(ort_runner(int8, THREADS)(x.numpy()), y),
            }
            variants = [
                Variant("eager fp32", torch_runner(model), accuracy=acc["eager fp32"]),
                Variant("onnxruntime fp32", ort_runner(fp32, THREADS), fp32,
                        acc["onnxruntime fp32"]),
                Variant("onnxruntime int8", ort_runner(int8, THREADS), int8,
                        acc["onnxruntime int8"]),
            ]  # fmt: skip
            rows = add_ratios(
                benchmark(variants, x.numpy().astype(np.float32), BenchConfig(rounds=5)),
                "eager fp32",
            )
            ops = kernels(int8)
        drop = 100 * (acc["eager fp32"] - acc["onnxruntime int8"])
        slim = [{k: r[k] for k in ("variant", "accuracy", "latency_p50_ms", "throughput_b64",
                                    "throughput_x", "file_bytes")} for r in rows]  # fmt: skip
        print(f"\n## int8 on ONNX Runtime: {name}\n\n{table(slim)}")
        print(
            f"accuracy drop {drop:.2f} points (target <= 0.5: {'met' if drop <= 0.5 else 'NOT met'})"
        )
        print(f"int8 kernels: {ops['int8']}\nfloat kernels: {ops['float']}")
        print(f"left in float: {plan.float_reasons}")
        out[name] = {"rows": slim, "drop_points": drop, "kernels": ops,
                     "float_layers": plan.float_reasons}  # fmt: skip
    return out


def attention_macs(model: nn.Module, example: torch.Tensor) -> int:
    """MACs of the attention blocks: q/k/v/out projections and the two products QK^T, AV."""
    total = 0

    def hook(m: Any, args: Any, _out: Any) -> None:
        nonlocal total
        n = args[0].shape[1]
        inner = m.num_heads * m.head_dim
        total += 4 * n * m.embed_dim * inner + 2 * n * n * inner

    hooks = [m.register_forward_hook(hook) for m in model.modules()
             if isinstance(m, MultiHeadAttention)]  # fmt: skip
    with torch.no_grad():
        model.eval()(example[:1])
    for h in hooks:
        h.remove()
    return total


def pruning_section(keep: dict[str, Any]) -> dict[str, Any]:
    from dlforge.compress.structured import (
        ChannelPrune,
        count_macs,
        prune_channels,
    )

    result = keep["mnist1d_transformer"]
    model, data = copy.deepcopy(result.model).eval(), result.data
    x, y = data.test
    batches = [
        (data.train[0][i : i + 256], data.train[1][i : i + 256]) for i in range(0, 2048, 256)
    ]
    surgery = prune_channels(model, x[:1], ChannelPrune(amount=0.5, heads=0.5), data=batches)
    pruned = surgery.model
    ft = FineTune(epochs=15, lr=5e-4)
    with torch.no_grad():
        before_ft = _accuracy(pruned(x).numpy(), y)
    finetune(pruned, data, ft)
    pruned.eval()
    with tempfile.TemporaryDirectory() as tmp:
        a = export_onnx(model, x[:1], Path(tmp) / "full.onnx")
        b = export_onnx(pruned, x[:1], Path(tmp) / "pruned.onnx")
        with torch.no_grad():
            acc_full, acc_pruned = _accuracy(model(x).numpy(), y), _accuracy(pruned(x).numpy(), y)
        variants = [Variant("unpruned (ORT fp32)", ort_runner(a, THREADS), a, acc_full),
                    Variant("heads + FFN pruned (ORT fp32)", ort_runner(b, THREADS), b,
                            acc_pruned)]  # fmt: skip
        rows = add_ratios(benchmark(variants, x.numpy().astype(np.float32)), "unpruned (ORT fp32)")
    att_before, att_after = attention_macs(model, x), attention_macs(pruned, x)
    summary = {
        "attention_macs_removed": 1 - att_after / att_before,
        "all_macs_removed": 1 - count_macs(pruned, x[:1]) / count_macs(model, x[:1]),
        "accuracy_unpruned": acc_full,
        "accuracy_after_surgery": before_ft,
        "accuracy_after_finetune": acc_pruned,
        "drop_points": 100 * (acc_full - acc_pruned),
        "throughput_x": rows[1]["throughput_x"],
        "latency_x": rows[1]["latency_x"],
        "kept": surgery.kept,
        "finetune_epochs": ft.epochs,
    }
    print("\n## Head + feed-forward pruning of the MNIST-1D transformer\n")
    print(table([{k: v for k, v in summary.items() if k != "kept"}]))
    met = summary["throughput_x"] >= 1.5 and summary["drop_points"] <= 1.0
    print(f"target throughput >= 1.5x at <= 1 point: {'met' if met else 'NOT met'}")
    return summary


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--only", nargs="+", default=["accuracy", "attention", "int8", "pruning"])
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    previous = RESULTS / "transformers.json"
    results = json.loads(previous.read_text()) if previous.exists() else {}
    results.pop("environment", None)
    keep: dict[str, Any] = {}
    if "attention" in args.only:
        results["attention"] = attention_section()
    if {"accuracy", "int8", "pruning"} & set(args.only):
        full = "accuracy" in args.only  # else only the models the later sections need
        names = list(CASES) if full else ["mnist1d_transformer", "digits_vit"]
        acc = accuracy_section(args.seeds if full else 1, keep, names)
        if "accuracy" in args.only:
            results["accuracy"] = acc
    if "int8" in args.only:
        results["int8"] = int8_section(keep)
    if "pruning" in args.only:
        results["pruning"] = pruning_section(keep)
    save("transformers", {**results, "args": vars(args)})


if __name__ == "__main__":
    main()
