"""A name registry and one factory: ``create_model("resnet20", input_shape, num_classes)``.

Every factory takes ``input_shape`` (without the batch dimension) and ``num_classes`` first, then
its own keyword arguments. A user's own model is named as ``package.module:function`` and is
called the same way.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from dlforge.config import Config, ConfigError

ModelFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}


@dataclass
class ModelConfig(Config):
    name: str = "cnn"
    kwargs: dict[str, Any] = field(default_factory=dict)


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator adding a factory under ``name``; a second model of the same name is an error."""

    def add(fn: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"a model named '{name}' is already registered")
        _REGISTRY[name] = fn
        return fn

    return add


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def is_import_path(name: str) -> bool:
    """``package.module:function`` names a factory outside the registry (importing runs code)."""
    return ":" in name


def resolve_factory(name: str) -> ModelFactory:
    if is_import_path(name):
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(
                f"model '{name}': cannot import module '{module_name}' ({exc})"
            ) from None
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise ConfigError(f"model '{name}': '{module_name}' has no callable '{attr}'")
        return fn
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; registered: {list_models()}"
        raise ConfigError(f"unknown model '{name}'{hint} (or give 'package.module:function')")
    return _REGISTRY[name]


def create_model(
    name: str, input_shape: Sequence[int], num_classes: int, **kwargs: Any
) -> nn.Module:
    """Build a model by registry name or ``package.module:function``; unknown kwargs are errors."""
    fn = resolve_factory(name)
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if not takes_any:
        valid = [p for p in params if p not in ("input_shape", "num_classes")]
        for key in kwargs:
            if key not in valid:
                close = difflib.get_close_matches(key, valid, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else f"; valid: {valid}"
                raise ConfigError(f"model '{name}' has no argument '{key}'{hint}")
    model = fn(input_shape=tuple(input_shape), num_classes=num_classes, **kwargs)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model factory '{name}' returned {type(model).__name__}, not nn.Module")
    return model
