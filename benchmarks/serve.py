"""Serving: batch-1 against dynamic batching, 10x overload, and the backends, measured.

Models (trained here, as in benchmarks/quantize.py): the digits CNN, the MNIST-1D CNN and
ResNet-20 (digits upsampled to 32x32). Each is exported fp32 and dlforge int8 (PTQ, QDQ) into
a deploy folder that ``dlforge serve`` serves as a run folder.

1. Serving (`--only serving`): ``dlforge serve`` in a subprocess on a free local port, loaded
   by a bounded closed-loop aiohttp client (fixed requests, time limit) at several concurrency
   levels, one sample per request: batch-1 serving against dynamic batching (max_wait 0 and
   2 ms). The client shares the 2 cores with the server. Target: dynamic ≥ 3x the requests per
   second of batch-1 at equal or better p99.
2. Overload (`--only overload`): 10x the clients at which throughput saturates, for 30 s,
   against a server with a bounded queue; every status code counted, the server's memory
   sampled, and normal load measured before and after.
3. Backends (`--only backends`): eager PyTorch, ONNX Runtime and OpenVINO at fp32 and int8 (and
   OpenVINO bf16 with --bf16), batch 1 and 64, on the benchmark harness (interleaved rounds,
   medians). Target: the fastest int8 backend ≥ 1.25x ONNX Runtime's int8 on ResNet-20 at
   equal accuracy.

    python benchmarks/serve.py [--only serving overload backends] [--models ...] [--bf16]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from common import save, table
from quantize import MODELS, data_for, train

from dlforge.compress.quantize import ptq
from dlforge.deploy.bench import (
    BenchConfig,
    Variant,
    add_ratios,
    benchmark,
    engine_variants,
    torch_runner,
)
from dlforge.deploy.export import export_onnx
from dlforge.deploy.loadgen import ServerProcess, compare_modes, load

logging.getLogger("dlforge").setLevel(logging.ERROR)
CONCURRENCY = [1, 8, 32, 64]


def deploy_folder(name: str, seed: int, root: Path) -> tuple[Path, Any, torch.nn.Module]:
    """Train, export fp32 and int8 and write the preprocessing: a folder dlforge serves."""
    spec = MODELS[name]
    data = data_for(spec, seed)
    model = train(spec, data, seed)
    x = data.train[0]
    calib = [x[i : i + 64] for i in range(0, min(len(x), 64 * 16), 64)]
    deploy = root / name / "deploy"
    deploy.mkdir(parents=True)
    export_onnx(model, x[:1], deploy / "model_fp32.onnx")
    export_onnx(ptq(model, calib).model, x[:1], deploy / "model_int8.onnx")
    # The benchmark's inputs are already normalised (upsampling came after), so none is stored.
    pre = {"input_shape": list(data.input_shape), "class_names": data.class_names}
    (deploy / "preprocessing.json").write_text(json.dumps(pre))
    return deploy.parent, data, model


def sample_body(data: Any) -> bytes:
    return json.dumps({"inputs": data.test[0][:1].numpy().tolist()}).encode()


def serving(name: str, folder: Path, data: Any, requests: int, duration: float) -> list[dict]:
    modes = {
        "batch-1": ["--set", "serve.max_batch_size=1"],
        "dynamic 0 ms": ["--set", "serve.max_batch_size=64", "--set", "serve.max_wait_ms=0"],
        "dynamic 2 ms": ["--set", "serve.max_batch_size=64", "--set", "serve.max_wait_ms=2"],
    }
    rows = compare_modes(folder, modes, sample_body(data), None, CONCURRENCY, requests, duration)
    base = {r["concurrency"]: r for r in rows if r["mode"] == "batch-1"}
    for r in rows:
        r["model"] = name
        r["p99_vs_batch1"] = r["p99_ms"] / base[r["concurrency"]]["p99_ms"]
        r["meets_target"] = r["rps_x"] >= 3 and r["p99_vs_batch1"] <= 1
    return rows


class MemorySampler(threading.Thread):
    """The server process's resident memory every ``every_s`` seconds, in MiB."""

    def __init__(self, pid: int, every_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.proc, self.every_s = psutil.Process(pid), every_s
        self.samples: list[float] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.samples.append(self.proc.memory_info().rss / 2**20)
            self.stop_event.wait(self.every_s)


def overload(name: str, folder: Path, data: Any, saturating: int, seconds: float) -> dict:
    """10x ``saturating`` clients for ``seconds`` against a bounded queue."""
    body = sample_body(data)
    settings = ["--set", "serve.max_queue=64", "--set", "serve.max_batch_size=64",
                "--set", "serve.max_wait_ms=2"]  # fmt: skip
    with ServerProcess(folder, *settings) as server:
        url = f"{server.url}/v1/predict"
        load(url, body, concurrency=8, requests=500, duration_s=5)  # warm
        before = load(url, body, concurrency=8, requests=100_000, duration_s=5)
        sampler = MemorySampler(server.pid)
        sampler.start()
        clients = 10 * saturating
        hit = load(url, body, concurrency=clients, requests=10**9, duration_s=seconds)
        time.sleep(1)
        after = load(url, body, concurrency=8, requests=100_000, duration_s=5)
        sampler.stop_event.set()
        sampler.join()
        alive = server.proc is not None and server.proc.poll() is None
    statuses = {int(k): v for k, v in hit["statuses"].items()}
    other_5xx = sum(v for k, v in statuses.items() if k >= 500 and k != 503)
    mem = sampler.samples
    return {
        "model": name,
        "clients": clients,
        "seconds": hit["seconds"],
        "answered": sum(statuses.values()),
        "statuses": hit["statuses"],
        "connection_errors": hit["errors"],
        "other_5xx": other_5xx,
        "ok_rps_during": hit["rps"],
        "ok_p99_ms_during": hit["p99_ms"],
        "rss_mib_start": mem[0],
        "rss_mib_max": max(mem),
        "rss_mib_end": mem[-1],
        "before": {k: before[k] for k in ("rps", "p50_ms", "p99_ms", "statuses")},
        "after": {k: after[k] for k in ("rps", "p50_ms", "p99_ms", "statuses")},
        "server_alive": alive,
    }


def backends(name: str, folder: Path, data: Any, model: torch.nn.Module, bf16: bool) -> list:
    deploy = folder / "deploy"
    files = {"fp32": deploy / "model_fp32.onnx", "int8": deploy / "model_int8.onnx"}
    cfg = BenchConfig(threads=2, backends=["ort", "openvino"], rounds=7, min_round_s=0.5,
                      precisions=["fp32", "int8", *(["bf16"] if bf16 else [])])  # fmt: skip
    variants = [Variant("fp32 eager (PyTorch)", torch_runner(model),
                        notes={"backend": "pytorch", "precision": "fp32"})]  # fmt: skip
    variants += engine_variants(files, cfg)
    x, y = data.test[0].numpy(), data.test[1].numpy()
    for v in variants:
        logits = np.concatenate([v.run(x[i : i + 256]) for i in range(0, len(x), 256)])
        v.accuracy = float((logits.argmax(1) == y).mean())
    rows = add_ratios(benchmark(variants, x, cfg), variants[0].name)
    ort_int8 = next(r for r in rows if r["backend"] == "ort" and r["precision"] == "int8")
    for r in rows:
        r["model"] = name
        r["vs_ort_int8"] = r["throughput_b64"] / ort_int8["throughput_b64"]
        # What batching gains inside the engine: batch-64 throughput over batch-1 throughput.
        # Dynamic batching in a server cannot gain more than this on the model's own time.
        r["batch_gain"] = r["throughput_b64"] * r["latency_p50_ms"] / 1e3
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", default=["serving", "overload", "backends"])
    parser.add_argument("--models", nargs="*", default=["digits_cnn", "mnist1d_cnn", "resnet20"])
    parser.add_argument("--serving-models", nargs="*", default=["digits_cnn", "resnet20"])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--overload-s", type=float, default=30.0)
    parser.add_argument("--bf16", action="store_true", help="also OpenVINO bf16 (emulated here)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", default=None, help="keep the deploy folders here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    out: dict[str, Any] = {"args": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        if args.keep:
            tmp = args.keep
        built = {}
        for name in args.models:
            start = time.perf_counter()
            built[name] = deploy_folder(name, args.seed, Path(tmp))
            print(f"{name}: trained and exported in {time.perf_counter() - start:.0f} s")
        if "backends" in args.only:
            rows = []
            for name, (folder, data, model) in built.items():
                rows += backends(name, folder, data, model, args.bf16)
            out["backends"] = rows
            print("\n## Backends\n")
            print(table([{k: r.get(k) for k in ("model", "variant", "precision", "accuracy",
                          "latency_p50_ms", "throughput_b64", "throughput_x", "vs_ort_int8",
                          "batch_gain")}
                         for r in rows]))  # fmt: skip
        if "serving" in args.only:
            rows = []
            for name in args.serving_models:
                folder, data, _ = built[name]
                rows += serving(name, folder, data, args.requests, args.duration)
            out["serving"] = rows
            print("\n## Serving: batch-1 against dynamic batching\n")
            print(table([{k: r[k] for k in ("model", "mode", "concurrency", "rps", "rps_x",
                          "p50_ms", "p99_ms", "p99_vs_batch1", "meets_target")}
                         for r in rows]))  # fmt: skip
        if "overload" in args.only:
            name = args.serving_models[-1]
            folder, data, _ = built[name]
            result = overload(
                name, folder, data, saturating=max(CONCURRENCY), seconds=args.overload_s
            )
            out["overload"] = result
            print("\n## Overload\n")
            print(json.dumps(result, indent=1))
    print(f"\nraw numbers: {save('serve', out)}")


if __name__ == "__main__":
    main()
