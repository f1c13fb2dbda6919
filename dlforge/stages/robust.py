"""The robust stage: how the trained model holds up against attacks and common corruptions.

Curves of robust accuracy against the budget for each attack (FGSM, PGD L∞/L2, CW-L2,
DeepFool, Square), the gradient-masking sanity checks, five severities of four corruptions and
a few clean/adversarial pairs. The compress and quantize stages after it read the same config
(``robust.compressed``) to add robustness columns for every compressed variant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dlforge.robust.config import RobustConfig
from dlforge.stages.base import RunContext, Stage

if TYPE_CHECKING:
    from torch import nn

    from dlforge.data import DataBundle

__all__ = ["RobustConfig", "RobustStage"]


class RobustStage(Stage):
    name = "robust"
    title = "Adversarial robustness and corruptions"

    def preflight(self, recipe: Any, data: DataBundle, model: nn.Module) -> None:
        from dlforge.robust.space import check_continuous

        check_continuous(data.train[0], f"robust: data source '{recipe.data.source}'")

    def run(self, ctx: RunContext) -> dict[str, Any]:
        from dlforge.robust.suite import robustness_report

        return robustness_report(ctx.model, ctx.data, ctx.recipe.robust, ctx.seed)

    def report(self, result: dict[str, Any], notes: list[str]) -> list[str]:
        from dlforge.report.sections import robust_section

        return robust_section(self.title, result, notes)

    def summary(self, result: dict[str, Any]) -> list[str]:
        return robust_summary(result)


def robust_summary(result: dict[str, Any]) -> list[str]:
    """Clean accuracy, each attack's curve on one line, and any failed sanity check."""
    lines = [f"clean accuracy {result['clean_accuracy']:.4f} on {result['samples']} test samples"]
    for attack, curve in result["curves"].items():
        points = "  ".join(f"{e:.3g}:{a:.3f}" for e, a in zip(curve["eps"], curve["accuracy"]))
        lines.append(f"{attack:<8} ({curve['norm']}) ε:accuracy  {points}")
    for name, curve in result.get("corruptions", {}).items():
        points = "  ".join(f"{a:.3f}" for a in curve["accuracy"])
        lines.append(f"{name:<15} severity 0-5  {points}")
    failed = [c for c in result.get("sanity", []) if not c["passed"]]
    lines += [f"SANITY CHECK FAILED: {c['check']} ({c['detail']})" for c in failed]
    if not failed and result.get("sanity"):
        lines.append(f"sanity checks: all {len(result['sanity'])} passed")
    return lines


def compare_probe(recipe: Any, data: DataBundle) -> Any:
    """The robustness probe the compress and quantize stages score their variants with, or None
    when ``robust.enabled`` and ``robust.compressed`` do not both ask for it."""
    cfg = recipe.robust
    if not (cfg.enabled and cfg.compressed):
        return None
    from dlforge.robust.suite import probe

    return probe(data, cfg, recipe.seed)
