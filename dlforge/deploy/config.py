"""Benchmark harness settings (no torch here: loading a recipe stays instant)."""

from __future__ import annotations

from dataclasses import dataclass

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

    def validate(self) -> None:
        for key in ("threads", "rounds", "latency_iters", "throughput_batch", "throughput_iters"):
            check(getattr(self, key) >= 1, key, getattr(self, key), "must be >= 1")
        check(self.warmup >= 0, "warmup", self.warmup, "must be >= 0")
        check(self.min_round_s >= 0, "min_round_s", self.min_round_s, "must be >= 0")
