"""MiniLM-L6 (all-MiniLM-L6-v2) sentence embeddings: dlforge int8 on ONNX Runtime vs fp32.

One run measures, on the same held-out sentences and the same 32 x 128-token batch:
- fp32 eager PyTorch (dlforge's ``SentenceEncoder``, the reference for cosine similarity);
- fp32 ONNX Runtime (``export_onnx``; key/value biases folded, as for int8);
- dlforge int8: ``quantize_encoder`` (PTQ, per-channel int8 weights, calibrated uint8
  activations, attention products in float), exported as QDQ and run by ONNX Runtime; and the
  same calibration with the attention products in int8 (the quantizer's default);
- the anchor: ONNX Runtime's own ``quantize_dynamic`` on the fp32 file, per-tensor and
  per-channel weights.

Accuracy: cosine similarity of each variant's embeddings to fp32 eager over held-out sentences
(mean and minimum). Speed: latency of one call on 32 texts of 128 real tokens, torch and ORT on
``THREADS`` threads each (ORT's workers not spinning, as in ``dlforge.deploy.bench``),
interleaved rounds in alternating order, medians; the speed ratio is the median of each round's
eager/variant ratio, so drift between rounds cancels. On a shared machine a second process can
take a core and slow 2-thread PyTorch far more than ONNX Runtime, so a one-thread CPU-time
column (``time.process_time``) is measured too: it counts only this process's work.

    python benchmarks/minilm.py [--rounds 7] [--observer mse] [--skip LAYER ...] [--sensitivity]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import save, table

from dlforge.deploy.bench import ort_runner, torch_runner
from dlforge.deploy.export import export_onnx
from dlforge.deploy.runtime import kernels
from dlforge.models.minilm import (
    SentenceEncoder,
    cosine_summary,
    encode_batch,
    float_attention_products,
    fold_attention_biases,
    load_minilm,
    make_sentences,
    quantize_encoder,
)

logging.getLogger("dlforge").setLevel(logging.ERROR)
THREADS = 2
LENGTH, BATCH = 128, 32  # the timed call: 32 texts of 128 tokens
CALIBRATION, HELD_OUT = 320, 256  # sentences (different seeds)
Runner = Callable[[np.ndarray], np.ndarray]


def batches(
    tokenizer: Any, sentences: list[str], size: int, pad_to_max: bool
) -> list[torch.Tensor]:
    return [encode_batch(tokenizer, sentences[i : i + size], LENGTH, pad_to_max)
            for i in range(0, len(sentences), size)]  # fmt: skip


def timing_batch(tokenizer: Any) -> np.ndarray:
    """32 passages cut at 128 tokens: no padding, every position a real token."""
    texts = [" ".join(make_sentences(12, seed=1000 + i)) for i in range(BATCH)]
    x = encode_batch(tokenizer, texts, LENGTH, pad_to_max=True)
    assert int(x[:, 1].sum()) == BATCH * LENGTH, "a timing text is shorter than 128 tokens"
    return x.numpy()


def embed(run: Runner, held: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([torch.from_numpy(run(b.numpy())) for b in held])


def ort_dynamic(fp32: Path, out: Path, per_channel: bool) -> Path:
    """ONNX Runtime's dynamic int8 quantization of the fp32 file (weights int8, activations
    quantized per call), after its recommended pre-processing."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = fp32.with_name("fp32_pre.onnx")
    if not pre.exists():
        quant_pre_process(str(fp32), str(pre))
    quantize_dynamic(str(pre), str(out), per_channel=per_channel, weight_type=QuantType.QInt8)
    return out


def time_rounds(runs: dict[str, Runner], x: np.ndarray, rounds: int) -> dict[str, list[float]]:
    """Wall seconds per call, ``rounds`` interleaved rounds in alternating order."""
    names = list(runs)
    for name in names:  # warm-up: allocations, ORT's first-run graph work
        runs[name](x)
        runs[name](x)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            runs[name](x)
            times[name].append(time.perf_counter() - start)
    return times


def cpu_one_thread(runs: dict[str, Runner], x: np.ndarray, rounds: int) -> dict[str, float]:
    """Median CPU seconds per call on one thread (this process's work only)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cpu: dict[str, list[float]] = {n: [] for n in runs}
        for name in runs:
            runs[name](x)
        for r in range(rounds):
            for name in list(runs) if r % 2 == 0 else list(runs)[::-1]:
                start = time.process_time()
                runs[name](x)
                cpu[name].append(time.process_time() - start)
        return {n: statistics.median(v) for n, v in cpu.items()}
    finally:
        torch.set_num_threads(previous)


def build_variants(
    model: SentenceEncoder, calib: list[torch.Tensor], x: np.ndarray, tmp: Path, args: Any
) -> tuple[dict[str, Path | None], dict[str, Any]]:
    """Export every variant; returns name -> ONNX file (None: eager) and what the quantizer did."""
    example = torch.from_numpy(x)
    # The int8 model has its key/value biases folded away (exact); so has the fp32 file, and
    # with it ORT's own quantization, so that the rows differ by quantization alone.
    fp32 = export_onnx(fold_attention_biases(model), example, tmp / "fp32.onnx")
    start = time.perf_counter()
    plan = quantize_encoder(model, calib, args.observer, args.skip, int8_attention=True)
    calib_s = time.perf_counter() - start
    attn8 = export_onnx(plan.model, example, tmp / "int8_attention.onnx")
    turned = float_attention_products(plan)  # same calibration, attention products float
    int8 = export_onnx(plan.model, example, tmp / "int8.onnx")
    files: dict[str, Path | None] = {
        "fp32 eager (PyTorch)": None,
        "fp32 ONNX Runtime": fp32,
        "dlforge int8 (ORT)": int8,
        "dlforge int8, int8 attention products (ORT)": attn8,
        "ORT quantize_dynamic per-tensor": ort_dynamic(fp32, tmp / "dyn_tensor.onnx", False),
        "ORT quantize_dynamic per-channel": ort_dynamic(fp32, tmp / "dyn_channel.onnx", True),
    }
    used = [q for q in plan.activation_quantizers if getattr(plan.model, q).mode == "quantize"]
    info = {
        "observer": args.observer,
        "skip": list(args.skip),
        "calibration_s": calib_s,
        "quantized_layers": len(plan.quantized),
        "float_layers": plan.float_layers,
        "activation_quantizers_in_use": len(used),
        "attention_quantizers_turned_off": len(turned),
        "kernels": kernels(int8),  # what ONNX Runtime runs after its graph optimizations
    }
    return files, info


def sensitivity(model: SentenceEncoder, tokenizer: Any, observer: str) -> list[dict[str, Any]]:
    """Cosine (fake-quantized model, PyTorch) with all layers int8, then with each encoder
    layer's Linears kept in float in turn: which layer's quantization costs the most."""
    calib = batches(tokenizer, make_sentences(160, seed=1), 32, False)
    held = batches(tokenizer, make_sentences(128, seed=2), 64, False)
    with torch.no_grad():
        ref = torch.cat([model(b) for b in held])
    rows = []
    linears = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
               "linear1", "linear2")  # fmt: skip
    layers = len(model.encoder.layers)
    for kept in [None, *range(layers)]:
        skip = [] if kept is None else [f"encoder.layers.{kept}.{n}" for n in linears]
        plan = quantize_encoder(model, calib, observer, skip)
        with torch.no_grad():
            out = torch.cat([plan.model(b) for b in held])
        name = "all int8" if kept is None else f"encoder.layers.{kept} float"
        rows.append({"config": name, **cosine_summary(ref, out)})
        print(f"  {name}: {rows[-1]['cosine_mean']:.4f} (min {rows[-1]['cosine_min']:.4f})")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--cpu-rounds", type=int, default=3)
    ap.add_argument("--observer", default="mse")
    ap.add_argument("--skip", nargs="*", default=[], help="Linear layers to keep in float")
    ap.add_argument("--sensitivity", action="store_true", help="also the per-layer sweep")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    load_before = os.getloadavg()
    model, tokenizer = load_minilm()
    calib = batches(tokenizer, make_sentences(CALIBRATION, seed=1), 32, False)
    # The exported graphs have a fixed length of 128: held-out sentences are padded to it.
    held = batches(tokenizer, make_sentences(HELD_OUT, seed=2), 64, True)
    x = timing_batch(tokenizer)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        files, info = build_variants(model, calib, x, tmp, args)
        runs = {n: torch_runner(model) if f is None else ort_runner(f, THREADS)
                for n, f in files.items()}  # fmt: skip
        ref = embed(runs["fp32 eager (PyTorch)"], held)
        accuracy = {n: cosine_summary(ref, embed(run, held)) for n, run in runs.items()}
        times = time_rounds(runs, x, args.rounds)
        single = {n: torch_runner(model) if f is None else ort_runner(f, 1)
                  for n, f in files.items()}  # fmt: skip
        cpu = cpu_one_thread(single, x, args.cpu_rounds)
        sizes = {n: os.path.getsize(f) if f is not None else None for n, f in files.items()}
    eager = "fp32 eager (PyTorch)"
    rows = []
    for name in files:
        ratios = [e / t for e, t in zip(times[eager], times[name])]
        rows.append({
            "variant": name,
            "cosine mean": accuracy[name]["cosine_mean"],
            "cosine min": accuracy[name]["cosine_min"],
            f"ms (32x128, {THREADS} thr)": 1e3 * statistics.median(times[name]),
            "vs eager": statistics.median(ratios),
            "CPU ms (1 thr)": 1e3 * cpu[name],
            "vs eager (1 thr CPU)": cpu[eager] / cpu[name],
            "file MB": sizes[name] / 2**20 if sizes[name] else "",
        })  # fmt: skip
    by = {r["variant"]: r for r in rows}
    ours = by["dlforge int8 (ORT)"]
    checks = [
        f"dlforge int8 cosine to fp32: mean {ours['cosine mean']:.4f} (target >= 0.99), "
        f"min {ours['cosine min']:.4f} over {HELD_OUT} held-out sentences",
        f"dlforge int8 speed: {ours['vs eager']:.2f}x fp32 eager at {THREADS} threads, "
        f"{ours['vs eager (1 thr CPU)']:.2f}x in one-thread CPU time (target >= 2)",
    ]
    print(f"\n## all-MiniLM-L6-v2, {HELD_OUT} held-out sentences, 32 x 128 tokens\n")
    print(table(rows))
    print("\n" + "\n".join(checks))
    print(f"\ndlforge int8 graph on ORT: {info['kernels']}")
    sweep = sensitivity(model, tokenizer, args.observer) if args.sensitivity else None
    save("minilm", {
        "rows": rows,
        "checks": checks,
        "quantization": info,
        "sensitivity": sweep,
        "raw_seconds": times,
        "setup": {"threads": THREADS, "rounds": args.rounds, "cpu_rounds": args.cpu_rounds,
                  "calibration_sentences": CALIBRATION, "held_out_sentences": HELD_OUT,
                  "timing_batch": [BATCH, LENGTH]},
        "load_average": {"before": load_before, "after": os.getloadavg()},
    })  # fmt: skip


if __name__ == "__main__":
    main()
