"""The stages after training, in the order a run takes them; ``pipeline.run``, the CLI and the
report all loop over ``STAGES``. Adding a stage: a module here with its config, ``run``,
``report`` and ``summary``, an entry below and a field of the same name in ``Recipe``."""

from dlforge.stages.base import RunContext, Stage
from dlforge.stages.bench import BenchStage
from dlforge.stages.compress import CompressStage
from dlforge.stages.crossval import CrossValStage
from dlforge.stages.ensemble import EnsembleStage
from dlforge.stages.evaluate import EvaluateStage
from dlforge.stages.quantize import QuantizeStage
from dlforge.stages.robust import RobustStage
from dlforge.stages.serve import ServeStage

STAGES: list[Stage] = [
    EvaluateStage(),
    CrossValStage(),
    EnsembleStage(),
    RobustStage(),
    CompressStage(),
    QuantizeStage(),
    BenchStage(),
    ServeStage(),
]


def get_stage(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise KeyError(f"no stage named {name!r}; stages: {[s.name for s in STAGES]}")


__all__ = ["STAGES", "RunContext", "Stage", "get_stage"]
