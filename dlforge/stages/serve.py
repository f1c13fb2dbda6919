"""The serve stage: the recipe's ``serve:`` section (what ``dlforge serve`` uses for a run
folder), and, when enabled, a load test of the run's exported model served for real."""

from __future__ import annotations

from dataclasses import dataclass, field

from dlforge.config import Config, check
from dlforge.deploy.config import ServeConfig


@dataclass
class LoadTestConfig(Config):
    """The load test after a run: batch-1 serving against dynamic batching."""

    concurrency: list[int] = field(default_factory=lambda: [1, 8, 32])
    requests: int = 400  # per concurrency level and mode
    duration_s: float = 10.0  # and at most this long

    def validate(self) -> None:
        check(bool(self.concurrency) and all(c >= 1 for c in self.concurrency), "concurrency",
              self.concurrency, "must be a non-empty list of numbers >= 1")  # fmt: skip
        check(self.requests >= 1, "requests", self.requests, "must be >= 1")
        check(self.duration_s > 0, "duration_s", self.duration_s, "must be > 0")


@dataclass
class ServeStageConfig(ServeConfig):
    enabled: bool = False  # load-test the served model at the end of a run
    loadtest: LoadTestConfig = field(default_factory=LoadTestConfig)
