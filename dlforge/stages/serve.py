"""The serve stage: the recipe's ``serve:`` section (what ``dlforge serve`` uses for a run
folder), and, when enabled, a load test of the run's exported model served for real."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlforge.config import Config, ConfigError, check
from dlforge.deploy.config import ServeConfig
from dlforge.stages.base import RunContext, Stage

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from dlforge.data import DataBundle
    from dlforge.recipe import Recipe


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


def serve_stage(run_dir: Path, cfg: ServeStageConfig, sample: np.ndarray) -> dict[str, Any]:
    """Serve the run's exported model for real (a subprocess on a free local port) and load it:
    batch-1 serving against dynamic batching at each concurrency level."""
    import json

    from dlforge.deploy.loadgen import compare_modes, serving_modes

    body = json.dumps({"inputs": sample[:1].tolist()}).encode()
    common = ["--backend", cfg.backend, "--precision", cfg.precision]
    if cfg.threads is not None:
        common += ["--set", f"serve.threads={cfg.threads}"]
    lt = cfg.loadtest
    rows = compare_modes(
        run_dir,
        serving_modes(cfg.max_batch_size, cfg.max_wait_ms),
        body,
        concurrency=lt.concurrency,
        requests=lt.requests,
        duration_s=lt.duration_s,
        common=common,
    )
    settings = {"backend": cfg.backend, "precision": cfg.precision,
                "max_batch_size": cfg.max_batch_size, "max_wait_ms": cfg.max_wait_ms,
                "requests": lt.requests, "duration_s": lt.duration_s}  # fmt: skip
    return {"rows": rows, "settings": settings}


class ServeStage(Stage):
    name = "serve"
    title = "Serving (load test)"

    def preflight(self, recipe: Recipe, data: DataBundle, model: nn.Module) -> None:
        del data, model
        if recipe.serve.enabled and not recipe.quantize.enabled:
            raise ConfigError(
                "the load test serves the exported files: enable quantize (quantize.enabled: "
                "true) or switch serve.enabled off",
                "serve.enabled",
            )

    def run(self, ctx: RunContext) -> dict[str, Any]:
        import numpy as np

        raw = ctx.data.test[0].numpy().astype(np.float32)
        stats = ctx.data.preprocessing.get("normalize")
        if stats:  # the server takes raw inputs: undo the normalisation of the test split
            shape = (1, -1) + (1,) * (raw.ndim - 2)
            raw = raw * np.reshape(stats["std"], shape) + np.reshape(stats["mean"], shape)
        return serve_stage(ctx.run_dir, ctx.recipe.serve, raw.astype(np.float32))

    def report(self, result: dict[str, Any], notes: list[str]) -> list[str]:
        from dlforge.report.sections import serve_section

        return serve_section(self.title, result, notes)

    def summary(self, result: dict[str, Any]) -> list[str]:
        from dlforge.report.sections import SERVE_COLUMNS
        from dlforge.report.tables import text_table

        rows = [{**r, "statuses": ", ".join(f"{k}: {v}" for k, v in r["statuses"].items())}
                for r in result["rows"]]  # fmt: skip
        return text_table(rows, SERVE_COLUMNS)
