"""Benchmark harness: latency at batch 1, throughput at a large batch, peak memory, file size.

Variants are measured in rounds, A/B interleaved, and summarised by medians: on a shared CPU a
process can run twice as slow as the next one, and interleaving spreads that drift evenly.
torch's thread count and ONNX Runtime's pool are set to the same number, and ORT's workers do
not spin between calls, so one engine's idle threads do not slow the other.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dlforge.deploy.config import BenchConfig
from dlforge.deploy.runtime import open_session

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass
class Variant:
    name: str
    run: Runner
    file: Path | None = None
    accuracy: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)


def torch_runner(model: nn.Module, autocast_dtype: torch.dtype | None = None) -> Runner:
    model = model.eval()

    @torch.no_grad()
    def run(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(x)
        if autocast_dtype is None:
            return model(t).float().numpy()
        with torch.autocast("cpu", dtype=autocast_dtype):
            return model(t).float().numpy()

    return run


def ort_runner(path: str | Path, threads: int) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = open_session(path, options)
    name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {name: x})[0])

    return run


def is_quantized(path: str | Path) -> bool:
    """True for a QDQ (int8) file: it holds DequantizeLinear nodes."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(n.op_type == "DequantizeLinear" for n in model.graph.node)


def engine_variants(files: dict[str, Path], cfg: BenchConfig) -> list[Variant]:
    """Each exported file on each backend of ``cfg.backends`` at each precision of
    ``cfg.precisions`` it can run at: an int8 file as it is, a float file at fp32, and on
    OpenVINO also at bf16. The precision the engine reports goes into the row."""
    from dlforge.deploy.backends import BACKEND_TITLES, open_model
    from dlforge.train.precision import cpu_has_native_bf16

    out = []
    for name, path in files.items():
        quantized = is_quantized(path)
        for backend in cfg.backends:
            wanted = ["int8"] if quantized else [q for q in cfg.precisions if q != "int8"]
            if quantized and "int8" not in cfg.precisions:
                continue
            for precision in wanted:
                if precision == "bf16" and backend != "openvino":
                    continue  # ONNX Runtime's CPU provider has no bf16 kernels to speak of
                model = open_model(path, backend, precision, cfg.threads)
                title = BACKEND_TITLES[backend]
                label = f"{name} ({title})" if quantized or precision == "fp32" else (
                    f"{name} ({title} {precision})"
                )  # fmt: skip
                notes: dict[str, Any] = {"backend": backend, "precision": model.precision}
                if model.precision == "bf16" and not cpu_has_native_bf16():
                    notes["note"] = "bf16 emulated: this CPU has no native bf16"
                out.append(Variant(label, model, file=Path(path), notes=notes))
    return out


def pick_fastest(
    rows: list[dict[str, Any]], reference_accuracy: float | None, tolerance: float
) -> dict[str, Any] | None:
    """The row with the highest throughput among those within ``tolerance`` (absolute) of
    ``reference_accuracy``; None when no row has an accuracy to compare."""
    if reference_accuracy is None:
        return None
    tput = next(k for k in rows[0] if k.startswith("throughput_b"))
    eligible = [r for r in rows if r.get("accuracy") is not None
                and r["accuracy"] >= reference_accuracy - tolerance]  # fmt: skip
    if not eligible:
        return None
    best = max(eligible, key=lambda r: r[tput])
    return {"variant": best["variant"], "throughput": best[tput], "accuracy": best["accuracy"],
            "throughput_x": best.get("throughput_x"), "tolerance": tolerance,
            "eligible": len(eligible), "measured": len(rows)}  # fmt: skip


def _reset_peak_rss() -> bool:
    try:  # Linux: writing 5 resets VmHWM (the peak resident set) for this process
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def benchmark(
    variants: list[Variant], sample: np.ndarray, cfg: BenchConfig | None = None
) -> list[dict[str, Any]]:
    """Measure every variant on ``sample`` (N, ...) float32; N >= throughput_batch."""
    cfg = cfg or BenchConfig()
    torch.set_num_threads(cfg.threads)
    one = np.ascontiguousarray(sample[:1], dtype=np.float32)
    big = np.ascontiguousarray(sample[: cfg.throughput_batch], dtype=np.float32)
    if len(big) < cfg.throughput_batch:
        big = np.ascontiguousarray(
            np.resize(sample, (cfg.throughput_batch, *sample.shape[1:])), dtype=np.float32
        )
    latencies: dict[str, list[float]] = {v.name: [] for v in variants}
    throughput: dict[str, list[float]] = {v.name: [] for v in variants}
    peak: dict[str, float | None] = {}
    for v in variants:  # warm-up, and each variant's peak memory on its own
        can_reset = _reset_peak_rss()
        for _ in range(cfg.warmup):
            v.run(one)
            v.run(big)
        peak[v.name] = _peak_rss_mib() if can_reset else None
    for r in range(cfg.rounds):
        for v in variants[:: 1 if r % 2 == 0 else -1]:
            v.run(one)  # untimed: the first call after another engine ran pays for its caches
            round_start, calls = time.perf_counter(), 0
            while calls < cfg.latency_iters or time.perf_counter() - round_start < cfg.min_round_s:
                start = time.perf_counter()
                v.run(one)
                latencies[v.name].append((time.perf_counter() - start) * 1e3)
                calls += 1
            start, calls = time.perf_counter(), 0
            while calls < cfg.throughput_iters or time.perf_counter() - start < cfg.min_round_s:
                v.run(big)
                calls += 1
            throughput[v.name].append(calls * len(big) / (time.perf_counter() - start))
    rows = []
    for v in variants:
        lat = np.asarray(latencies[v.name])
        rows.append({
            "variant": v.name,
            "accuracy": v.accuracy,
            "latency_p50_ms": float(np.percentile(lat, 50)),
            "latency_p90_ms": float(np.percentile(lat, 90)),
            "latency_p99_ms": float(np.percentile(lat, 99)),
            "latency_calls": len(lat),
            f"throughput_b{cfg.throughput_batch}": statistics.median(throughput[v.name]),
            "peak_rss_mib": peak[v.name],
            "file_bytes": os.path.getsize(v.file) if v.file is not None else None,
            "threads": cfg.threads,
            **v.notes,
        })  # fmt: skip
    return rows


def add_ratios(rows: list[dict[str, Any]], baseline: str) -> list[dict[str, Any]]:
    """Throughput, latency and size relative to the ``baseline`` row."""
    base = next(r for r in rows if r["variant"] == baseline)
    tput = next(k for k in base if k.startswith("throughput_b"))
    for r in rows:
        r["throughput_x"] = r[tput] / base[tput]
        r["latency_x"] = r["latency_p50_ms"] / base["latency_p50_ms"]
        if r["file_bytes"] and base["file_bytes"]:
            r["size_x"] = r["file_bytes"] / base["file_bytes"]
    return rows
