"""A run's checkpoint as data: what its metadata must hold, and the one way to rebuild from it.

``load_checkpoint`` is what ``dlforge evaluate/quantize/compress/bench`` use. A checkpoint is a
file someone may have sent you, so loading one never runs code: its metadata is checked field by
field (a malformed file is a ``CheckpointError`` naming it), and it may build only registered
models. A ``package.module:function`` factory named inside a checkpoint would import and call
that code, so it needs the caller's explicit ``trust_code=True`` (``--trust-code``). A recipe
the user wrote may name their own factory as before: the user is the author of that file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from dlforge.config import Config, ConfigError, check, from_dict
from dlforge.environment import environment
from dlforge.models.config import ModelConfig
from dlforge.models.registry import create_model, is_import_path
from dlforge.recipe import Recipe, recipe_from_dict
from dlforge.train.checkpoint import CheckpointError, load_weights, read_meta

CHECKPOINT_FORMAT = "dlforge-checkpoint/1"


@dataclass
class ModelMeta(Config):
    name: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)
    input_shape: list[int] = field(default_factory=list)
    num_classes: int = 0
    parameters: int = 0

    def validate(self) -> None:
        check(bool(self.name), "name", self.name, "must name a model")
        check(
            1 <= len(self.input_shape) <= 4 and all(d >= 1 for d in self.input_shape),
            "input_shape",
            self.input_shape,
            "must be 1 to 4 positive sizes",
        )
        check(self.num_classes >= 2, "num_classes", self.num_classes, "must be >= 2")


@dataclass
class CheckpointMeta(Config):
    """The part of a checkpoint's metadata that ``load_checkpoint`` relies on."""

    format: str = ""
    model: ModelMeta = field(default_factory=ModelMeta)
    class_names: list[str] = field(default_factory=list)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        check(
            self.format == CHECKPOINT_FORMAT, "format", self.format, f"must be {CHECKPOINT_FORMAT}"
        )
        n = self.model.num_classes
        check(len(self.class_names) == n, "class_names", self.class_names, f"must be {n} names")
        stats = self.preprocessing.get("normalize")
        if stats is not None:
            _check_normalizer(stats, self.model.input_shape[0])


def _check_normalizer(stats: Any, channels: int) -> None:
    key = "preprocessing.normalize"
    if not isinstance(stats, dict):
        raise ConfigError(f"must be a mapping with mean and std, got {stats!r}", key)
    for part in ("mean", "std"):
        values = stats.get(part)
        ok = (
            isinstance(values, list)
            and len(values) == channels
            and all(isinstance(v, int | float) and math.isfinite(v) for v in values)
        )
        check(ok, f"{key}.{part}", values, f"must be {channels} finite numbers")
    check(all(v > 0 for v in stats["std"]), f"{key}.std", stats["std"], "must be positive")


def checkpoint_meta(recipe: Recipe, data: Any, model: nn.Module) -> dict[str, Any]:
    """What a checkpoint needs to rebuild its model and data without the recipe file."""
    return {
        "format": CHECKPOINT_FORMAT,
        "model": {
            "name": recipe.model.name,
            "kwargs": recipe.model.kwargs,
            "input_shape": list(data.input_shape),
            "num_classes": data.num_classes,
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "class_names": data.class_names,
        "preprocessing": data.preprocessing,
        "recipe": recipe.to_dict(),
        "environment": environment(),
    }


def read_checkpoint_meta(path: str | Path) -> CheckpointMeta:
    """The checkpoint's metadata, checked; anything malformed is a CheckpointError naming it."""
    raw = read_meta(path)
    fields = ("format", "model", "class_names", "preprocessing", "recipe")
    wanted: dict[str, Any] = {f: raw[f] for f in fields if f in raw}
    missing = sorted({"format", "model", "class_names", "recipe"} - set(wanted))
    if missing:
        raise CheckpointError(f"checkpoint {path}: its metadata has no {', '.join(missing)}")
    try:
        return from_dict(CheckpointMeta, wanted)
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {path}: bad metadata: {exc}") from None


def check_factory(name: str, path: str | Path, trust_code: bool) -> None:
    """Refuse a factory that would import code named by a file, unless the user opted in."""
    if is_import_path(name) and not trust_code:
        raise CheckpointError(
            f"checkpoint {path} names the model factory '{name}', which would import and run "
            "code; a checkpoint may build only registered models unless you trust it: pass "
            "--trust-code (trust_code=True in Python)"
        )


def checkpoint_recipe(
    path: str | Path, meta: CheckpointMeta, overrides: list[str] | None = None
) -> Recipe:
    """The recipe stored in a checkpoint, with ``overrides``; its model is the checked one."""
    try:
        stored = recipe_from_dict(meta.recipe)
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {path}: its recipe is invalid: {exc}") from None
    # The model the checkpoint was checked against, never a second name hidden in the recipe.
    stored.model = ModelConfig(name=meta.model.name, kwargs=dict(meta.model.kwargs))
    return recipe_from_dict(stored.to_dict(), overrides) if overrides else stored


def load_checkpoint(path: str | Path, trust_code: bool = False) -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model from a checkpoint's own metadata and load its weights (eval mode)."""
    meta = read_checkpoint_meta(path)
    m = meta.model
    check_factory(m.name, path, trust_code)
    try:
        model = create_model(m.name, m.input_shape, m.num_classes, **m.kwargs)
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {path}: cannot build its model: {exc}") from None
    load_weights(path, model)
    count = sum(p.numel() for p in model.parameters())
    if m.parameters and count != m.parameters:
        raise CheckpointError(
            f"checkpoint {path}: its model has {count} parameters, the metadata says {m.parameters}"
        )
    return model.eval(), meta
