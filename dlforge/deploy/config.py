"""Benchmark harness settings (no torch here: loading a recipe stays instant)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dlforge.config import Config, check


@dataclass
class BenchConfig(Config):
    threads: int = 2
    warmup: int = 5
    rounds: int = 5
    # Batch-1 calls per round, at least; rounds also last min_round_s. With the default 5 rounds
    # p99 rests on 500 calls or more (it rested on 20 and read one outlier as the tail).
    latency_iters: int = 100
    throughput_batch: int = 64
    throughput_iters: int = 5  # large-batch calls per round, at least
    min_round_s: float = 0.2  # keep calling until a round lasts this long (small models)
    # Engines for the exported files (ort, openvino) and the precisions to run them at: int8
    # files run as they are; float files at fp32, and on OpenVINO also at bf16 if asked.
    backends: list[str] = field(default_factory=lambda: ["ort"])
    precisions: list[str] = field(default_factory=lambda: ["fp32", "int8"])
    # "fastest": the highest throughput among variants within this much accuracy (absolute)
    # of the eager fp32 model.
    accuracy_tolerance: float = 0.005

    def validate(self) -> None:
        from dlforge.deploy.backends import BACKENDS

        for b in self.backends:
            check(b in BACKENDS, "backends", self.backends, f"must be among {BACKENDS}")
        for q in self.precisions:
            check(q in ("fp32", "int8", "bf16"), "precisions", self.precisions,
                  "must be among fp32, int8, bf16")  # fmt: skip
        check(self.accuracy_tolerance >= 0, "accuracy_tolerance", self.accuracy_tolerance,
              "must be >= 0")  # fmt: skip
        check("bf16" not in self.precisions or "openvino" in self.backends, "precisions",
              self.precisions, "bf16 runs on OpenVINO only: add openvino to the backends")  # fmt: skip
        for key in ("threads", "rounds", "latency_iters", "throughput_batch", "throughput_iters"):
            check(getattr(self, key) >= 1, key, getattr(self, key), "must be >= 1")
        check(self.warmup >= 0, "warmup", self.warmup, "must be >= 0")
        check(self.min_round_s >= 0, "min_round_s", self.min_round_s, "must be >= 0")


@dataclass
class ServeConfig(Config):
    """``dlforge serve``: where it listens, how it batches, and what it refuses.

    Requests wait at most ``max_wait_ms`` to be joined into one batch of at most
    ``max_batch_size`` rows (1 serves every request on its own). At most ``max_queue`` requests
    wait; beyond that the server answers 503 with Retry-After. ``max_inflight_per_client``
    (by the X-Client-ID header, else the peer address) answers 429 beyond it; 0 is no limit.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1  # server processes on the one port
    backend: str = "ort"  # ort or openvino
    precision: str = "int8"  # int8 or fp32 (the exported files); openvino also bf16 or auto
    threads: int | None = None  # the engine's threads per worker (default: cores / workers)
    max_batch_size: int = 64
    # 0 joins what arrived while the model was busy, without waiting: the best in our load
    # tests of closed-loop clients (BENCHMARKS.md); a wait helps when requests trickle in.
    max_wait_ms: float = 0.0
    max_queue: int = 256
    max_inflight_per_client: int = 0
    max_body_bytes: int = 16 * 1024 * 1024
    max_rows: int = 4096  # samples in one request
    max_images: int = 64  # image files in one request
    max_decoded_bytes: int = 64 * 1024 * 1024  # a request's inputs as float32, after decoding
    max_job_bytes: int = 256 * 1024 * 1024  # inputs held by waiting jobs, per worker
    retry_after_s: int = 1
    max_jobs: int = 1024  # asynchronous jobs waiting or running, per worker
    job_ttl_s: float = 3600.0  # finished jobs' results are kept this long
    graceful_timeout_s: float = 30.0  # shutdown waits this long for requests in flight
    warmup: bool = True  # run each batch size once before answering (no first-sight stalls)

    def validate(self) -> None:
        from dlforge.deploy.backends import BACKENDS, PRECISIONS

        check(self.backend in BACKENDS, "backend", self.backend, f"must be one of {BACKENDS}")
        choices = PRECISIONS.get(self.backend, ())
        check(self.precision in choices, "precision", self.precision,
              f"must be one of {choices} for backend {self.backend}")  # fmt: skip
        check(0 <= self.port <= 65535, "port", self.port, "must be in 0..65535")
        for key in ("workers", "max_batch_size", "max_queue", "max_body_bytes", "max_rows",
                    "max_jobs", "retry_after_s", "max_images", "max_decoded_bytes",
                    "max_job_bytes"):  # fmt: skip
            check(getattr(self, key) >= 1, key, getattr(self, key), "must be >= 1")
        check(self.threads is None or self.threads >= 1, "threads", self.threads, "must be >= 1")
        check(self.max_wait_ms >= 0, "max_wait_ms", self.max_wait_ms, "must be >= 0")
        check(self.max_inflight_per_client >= 0, "max_inflight_per_client",
              self.max_inflight_per_client, "must be >= 0 (0: no limit)")  # fmt: skip
        check(self.job_ttl_s > 0, "job_ttl_s", self.job_ttl_s, "must be > 0")
        check(self.graceful_timeout_s >= 0, "graceful_timeout_s", self.graceful_timeout_s,
              "must be >= 0")  # fmt: skip
