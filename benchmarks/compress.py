"""Compression techniques against the uncompressed baseline, on three models, over seeds.

For each seed a model is trained (``quantize.train``) and every technique starts from it
(``dlforge.stages.compress.compress_stage``): 90% unstructured pruning (gradual, then fine-tuned
at 90%), structured channel pruning that removes about half of the multiply-accumulates
(channel counts in multiples of 16, fine-tuned), low-rank factorisation (half of the
factorised layers' parameters, fine-tuned), Deep Compression (pruning, 4-bit k-means sharing,
Huffman; the ratio is the written file's) and a half-width student (about a quarter of the
parameters) distilled from the model, beside the same student trained alone with the same
recipe. Speed is ONNX Runtime (2 threads; batch 64 throughput, batch 1 latency) on the exported
variants, interleaved with the baseline in the same run.

Per variant the table gives the mean accuracy drop over seeds (and its spread), sizes, and the
median of the per-seed speed ratios. ``gap closed`` is (distilled - alone) / (teacher - alone)
on the seed means; where the student alone is within half a point of the teacher there is no
gap worth closing and the script says so instead of printing a ratio of noise.

    python benchmarks/compress.py [--seeds 3] [--models digits_cnn mnist1d_cnn resnet20]
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import tempfile
from pathlib import Path
from typing import Any

from common import save, table
from quantize import MODELS, data_for, train

from dlforge.config import from_dict
from dlforge.stages.compress import CompressConfig, compress_stage

logging.getLogger("dlforge").setLevel(logging.ERROR)

FINETUNE = {"lr": 1e-3, "schedule": "cosine", "label_smoothing": 0.1}
SETTINGS: dict[str, Any] = {
    "techniques": ["prune", "structured", "lowrank", "deep_compression", "distill"],
    "prune": {"sparsity": 0.9, "prune_share": 0.5, "finetune": {**FINETUNE, "epochs": 40}},
    "structured": {
        "macs_removed": 0.5,
        "round_to": 16,
        "finetune": {**FINETUNE, "epochs": 40, "lr": 3e-3},
    },
    "lowrank": {"ratio": 0.5, "finetune": {**FINETUNE, "epochs": 10}},
    "deep_compression": {
        "sparsity": 0.9,
        "prune_share": 0.5,
        "finetune": {**FINETUNE, "epochs": 40},
        "weight_bits": 4,
        "codebook": {"epochs": 2, "lr": 1e-4, "schedule": "constant", "label_smoothing": 0.1},
    },
    "distill": {
        "width": 0.5,
        "temperature": 4.0,
        "alpha": 0.9,
        "train": {"epochs": 30, "lr": 3e-3, "weight_decay": 1e-2, "schedule": "cosine"},
    },
    "bench_rounds": 5,
}
# Where one setting does not fit all: ResNet-20 keeps its accuracy at 95% sparsity, and its
# epochs cost about 20x a small CNN's, so it fine-tunes for fewer of them.
PER_MODEL: dict[str, dict[str, Any]] = {
    "resnet20": {
        "prune": {"finetune": {"epochs": 20}},
        "structured": {"finetune": {"epochs": 20}},
        "deep_compression": {"sparsity": 0.95, "finetune": {"epochs": 20}},
        "distill": {"train": {"epochs": 15}},
    }
}
NO_GAP_POINTS = 0.5  # below this teacher-student gap (seed means) there is nothing to close


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` laid over it, nested mappings merged key by key."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) else value
    return out


def settings_for(model: str, seed: int) -> dict[str, Any]:
    out = merged(SETTINGS, PER_MODEL.get(model, {}))
    out["distill"]["train"]["seed"] = seed
    return out


def summarise(runs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per variant over the seeds' runs; the distillation gap on the seed means."""
    rows = []
    for i, first in enumerate(runs[0]["rows"]):
        per_seed = [run["rows"][i] for run in runs]
        drops = [r["accuracy_drop_points"] for r in per_seed]
        rows.append(
            {
                "variant": first["variant"],
                "accuracy": statistics.mean(r["accuracy"] for r in per_seed),
                "drop_points": statistics.mean(drops),
                "drop_sd": statistics.stdev(drops) if len(drops) > 1 else 0.0,
                "params": first["params"],
                "nonzero_params": round(statistics.mean(r["nonzero_params"] for r in per_seed)),
                "macs": first["macs"],
                "stored_bytes": round(statistics.mean(r["stored_bytes"] for r in per_seed)),
                "compression_x": statistics.median(r["compression_x"] for r in per_seed),
                "latency_p50_ms": statistics.median(r["latency_p50_ms"] for r in per_seed),
                "throughput_x": statistics.median(r["throughput_x"] for r in per_seed),
            }
        )
    acc = {r["variant"]: r["accuracy"] for r in rows}
    gap = 100 * (acc["baseline"] - acc["student_alone"])
    gained = 100 * (acc["distill"] - acc["student_alone"])
    distill = {
        "gap_points": gap,
        "gained_points": gained,
        "gap_closed": gained / gap if gap >= NO_GAP_POINTS else None,
        "per_seed_gap_closed": [run["notes"]["distill"]["gap_closed"] for run in runs],
    }
    return rows, distill


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    results = {}
    for name in args.models:
        spec = MODELS[name]
        runs = []
        for seed in range(args.seeds):
            cfg = from_dict(CompressConfig, {"enabled": True, **settings_for(name, seed)})
            data = data_for(spec, seed)
            model = train(spec, data, seed)
            with tempfile.TemporaryDirectory() as tmp:
                out = compress_stage(
                    model, data, cfg, Path(tmp), spec["model"][0], spec["model"][1]
                )
            out["notes"]["deep_compression"].pop("file", None)  # a deleted temporary file
            runs.append(out)
            print(f"{name} seed {seed}: done", flush=True)
        rows, distill = summarise(runs)
        results[name] = {"rows": rows, "distill": distill, "runs": runs}
        print(f"\n## {name} ({args.seeds} seeds; ONNX Runtime, 2 threads)\n")
        print(table(rows))
        account = runs[0]["notes"]["deep_compression"]["account"]
        print(
            f"\nDeep Compression file, seed 0: {account['file_bytes']} bytes "
            f"({account['file_ratio']:.1f}x against fp32); the theoretical account "
            f"{account['account_bytes']} bytes ({account['account_ratio']:.1f}x):\n"
        )
        keep = ("layer", "params", "entries", "code_bytes", "index_bytes", "codebook_bytes")
        extra = ("table_bytes", "overhead_bytes", "file_bytes", "account_bytes")
        layers = [{k: r[k] for k in (*keep, *extra)} for r in account["layers"]]
        dense = account["dense_bytes"]
        print(
            table(
                [
                    *layers,
                    {
                        "layer": "dense tensors (biases)",
                        "file_bytes": dense + account["dense_overhead_bytes"],
                        "account_bytes": dense,
                    },
                    {"layer": "header, counts, checksum", "file_bytes": account["header_bytes"]},
                ]
            )
        )
        if distill["gap_closed"] is None:
            print(
                f"\ndistillation: the student alone scores {distill['gap_points']:.2f} points below "
                f"the teacher (under {NO_GAP_POINTS}: no gap to close); distilled "
                f"{distill['gained_points']:+.2f} points against the student alone"
            )
        else:
            print(
                f"\ndistillation closed {distill['gap_closed']:.2f} of the "
                f"{distill['gap_points']:.2f}-point gap between the student alone and the teacher"
            )
    save(
        "compress",
        {"results": results, "settings": SETTINGS, "per_model": PER_MODEL, "seeds": args.seeds},
    )


if __name__ == "__main__":
    main()
