"""The server's Prometheus metrics (``GET /metrics``), from the ``prometheus-client`` package.

Each app has its own registry, so several servers can live in one process (tests). Under
``--workers N`` the workers write their values to files in ``PROMETHEUS_MULTIPROC_DIR`` (set by
``dlforge serve`` before they start) and ``/metrics`` adds up every worker's, whichever one
answers the scrape.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "dlforge_requests", "HTTP requests answered, by route and status code",
            ["route", "status"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "dlforge_request_latency_seconds", "Time from request to response, by route",
            ["route"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "dlforge_batch_size", "Rows in each batch the model ran",
            buckets=BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.inference = Histogram(
            "dlforge_inference_seconds", "Time the model took for each batch",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "dlforge_queue_depth", "Requests waiting for or inside a model call",
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.rejected = Counter(
            "dlforge_rejected", "Requests refused for load: queue full (503) or per client (429)",
            ["reason"], registry=r,
        )  # fmt: skip

    def observe_batch(self, rows: int, seconds: float) -> None:
        self.batch_size.observe(rows)
        self.inference.observe(seconds)

    def exposition(self) -> bytes:
        """The text format; every worker's values when the server runs several."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
