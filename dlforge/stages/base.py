"""What a stage is: a config section of the recipe, ``run(context) -> result``, and how its
result reads in the report and in the terminal.

A stage module imports only configs at the top (no torch), so loading a recipe stays instant;
the technique packages are imported inside ``run``. Stages pass things on through the
``RunContext`` (the trained model, the data, the ONNX files written so far), one direction only:
each reads what the stages before it left and adds its own.
"""

from __future__ import annotations

import copy
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from torch import nn

    from dlforge.data import DataBundle
    from dlforge.recipe import Recipe


@dataclass
class RunContext:
    """What a stage runs on."""

    recipe: Recipe
    run_dir: Path
    data: DataBundle
    model: nn.Module  # the trained model (best weights)
    onnx_files: dict[str, Path] = field(default_factory=dict)  # variant name -> exported file
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # earlier stages' results

    @property
    def seed(self) -> int:
        return self.recipe.seed


class Stage:
    """The base of every stage after training. Subclasses set ``name`` (the recipe section and
    the key in ``metrics.json``) and ``title`` (the report heading) and implement ``run``."""

    name: ClassVar[str]
    title: ClassVar[str]

    def config(self, recipe: Recipe) -> Any:
        return getattr(recipe, self.name)

    def enabled(self, recipe: Recipe) -> bool:
        return bool(getattr(self.config(recipe), "enabled", True))

    def run(self, ctx: RunContext) -> dict[str, Any]:
        raise NotImplementedError

    def preflight(self, recipe: Recipe, data: DataBundle, model: nn.Module) -> None:
        """Refuse, before any training, what ``run`` would fail on (e.g. a layer a technique
        cannot handle): raise a ``DlforgeError`` naming it. ``model`` is untrained; leave it
        unchanged."""
        del recipe, data, model

    def report(self, result: dict[str, Any], notes: list[str]) -> list[str]:
        """HTML parts of the stage's report section (its heading included)."""
        from dlforge.report.tables import kv_table

        return [f"<h2>{html.escape(self.title)}</h2>", kv_table(result)]

    def summary(self, result: dict[str, Any]) -> list[str]:
        """A few lines for the terminal at the end of a command."""
        del result
        return []


def plain_copy(model: nn.Module) -> nn.Module:
    """An eval-mode CPU copy in the default memory format (the trainer may leave NHWC)."""
    import torch

    out: nn.Module = copy.deepcopy(model).cpu().eval()
    return out.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
