"""Recipes: one YAML file that configures a whole run, validated into typed configs.

Layers, lowest first: defaults in the dataclasses → the YAML recipe → ``--set key=value``
overrides. An unknown key or a wrong type is an error naming the key (and the closest valid
one). The resolved recipe is saved with the run.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dlforge.config import Config, ConfigError, from_dict, set_path, to_dict
from dlforge.data.config import DataConfig
from dlforge.evaluate.config import CrossValConfig, EnsembleConfig, EvalConfig
from dlforge.models.config import SEARCH_DIRS, ModelConfig
from dlforge.robust.config import RobustConfig
from dlforge.stages.bench import BenchStageConfig
from dlforge.stages.compress import CompressConfig
from dlforge.stages.quantize import QuantizeStageConfig
from dlforge.stages.serve import ServeStageConfig
from dlforge.train.config import TrainConfig


@dataclass
class ReportConfig(Config):
    enabled: bool = True


@dataclass
class Recipe(Config):
    name: str = "default"
    seed: int = 0
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    crossval: CrossValConfig = field(default_factory=CrossValConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    robust: RobustConfig = field(default_factory=RobustConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)
    quantize: QuantizeStageConfig = field(default_factory=QuantizeStageConfig)
    bench: BenchStageConfig = field(default_factory=BenchStageConfig)
    serve: ServeStageConfig = field(default_factory=ServeStageConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def validate(self) -> None:
        if not self.name or any(c in self.name for c in "/\\") or self.name.startswith("."):
            raise ConfigError(f"must be a plain folder name, got {self.name!r}", "name")
        ens = self.ensemble
        if ens.enabled and ens.kind == "snapshot" and self.train.epochs % ens.members:
            raise ConfigError(
                f"a snapshot ensemble needs train.epochs ({self.train.epochs}) to split into "
                f"{ens.members} equal cycles, got {ens.members}",
                "ensemble.members",
            )

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def parse_override(item: str) -> tuple[str, Any]:
    """``"train.optimizer.lr=0.1"`` → ("train.optimizer.lr", 0.1); values are read as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot read value {raw!r} ({exc})") from None
    return key.strip(), value


def recipe_from_dict(data: dict[str, Any], overrides: list[str] | None = None) -> Recipe:
    """A Recipe from a nested dict with ``--set``-style overrides; ``data`` is left unchanged."""
    data = copy.deepcopy(data)  # overrides write into nested sections: never into the caller's
    for item in overrides or []:
        key, value = parse_override(item)
        set_path(data, key, value, Recipe)
    return from_dict(Recipe, data)


def _remember_folder(recipe_path: Path) -> None:
    """A user's ``package.module:function`` model is also looked for beside their recipe."""
    folder = recipe_path.resolve().parent
    if folder not in SEARCH_DIRS:
        SEARCH_DIRS.append(folder)


def load_recipe(path: str | Path | None, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe (or start from the defaults when ``path`` is None)."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"recipe not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"recipe {p} cannot be read as text ({exc})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"recipe {p} is not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"recipe {p} must be a mapping at the top level")
        data = loaded
        _remember_folder(p)
    try:
        return recipe_from_dict(data, overrides)
    except ConfigError as exc:
        where = f"recipe {path}: " if path is not None else ""
        raise ConfigError(f"{where}{exc}") from None
