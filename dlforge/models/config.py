"""The model section of a recipe (no torch here: loading a recipe stays instant)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlforge.config import Config, check


@dataclass
class ModelConfig(Config):
    name: str = "cnn"  # a registered model, or a user's factory as package.module:function
    kwargs: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        check(bool(self.name), "name", self.name, "must name a model")


# Folders a user's ``package.module:function`` is also looked for in, besides sys.path: the
# folders of the recipes loaded so far (``load_recipe`` adds them), then the current folder.
SEARCH_DIRS: list[Path] = []
