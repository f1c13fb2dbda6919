"""A name registry and one factory: ``create_model("resnet20", input_shape, num_classes)``.

Every factory takes ``input_shape`` (without the batch dimension) and ``num_classes`` first, then
its own keyword arguments. A user's own model is named as ``package.module:function`` and is
called the same way.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from dlforge.config import ConfigError
from dlforge.models.config import SEARCH_DIRS

ModelFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator adding a factory under ``name``; a second model of the same name is an error."""

    def add(fn: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"a model named '{name}' is already registered")
        _REGISTRY[name] = fn
        return fn

    return add


def _builtins() -> dict[str, ModelFactory]:
    """The registry, with dlforge's own architectures registered on first use."""
    from dlforge.models import cnn, mlp, recurrent, resnet, transformer  # noqa: F401  (importing registers them)

    return _REGISTRY


def list_models() -> list[str]:
    return sorted(_builtins())


def is_import_path(name: str) -> bool:
    """``package.module:function`` names a factory outside the registry (importing runs code)."""
    return ":" in name


def _import_user_module(name: str, module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        top = module_name.partition(".")[0]
        if exc.name != top:  # the module exists but something it imports does not
            raise ConfigError(f"model '{name}': importing '{module_name}' failed ({exc})") from None
    tried = []
    for folder in [*SEARCH_DIRS, Path.cwd()]:
        tried.append(str(folder))
        if (folder / f"{top}.py").is_file() or (folder / top / "__init__.py").is_file():
            sys.path.insert(0, str(folder))
            try:
                return importlib.import_module(module_name)
            except ImportError as exc:
                raise ConfigError(
                    f"model '{name}': cannot import '{module_name}' ({exc})"
                ) from None
    raise ConfigError(
        f"model '{name}': cannot import module '{module_name}': not on PYTHONPATH, nor in "
        f"{', '.join(dict.fromkeys(tried))} (put {top}.py beside the recipe, or set PYTHONPATH)"
    )


def resolve_factory(name: str) -> ModelFactory:
    if is_import_path(name):
        module_name, _, attr = name.partition(":")
        module = _import_user_module(name, module_name)
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise ConfigError(f"model '{name}': '{module_name}' has no callable '{attr}'")
        return fn
    if name not in _builtins():
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


# The inputs `dlforge models` sizes a model on: CIFAR-like images, else MNIST-1D-like signals.
EXAMPLE_SHAPES = (((3, 32, 32), "3x32x32 input"), ((1, 40), "1x40 signal"))


def describe_models() -> list[dict[str, str]]:
    """Name, one-line summary, main arguments and parameter count of every registered model."""
    rows = []
    for name in list_models():
        fn = _REGISTRY[name]
        doc = (inspect.getdoc(getattr(fn, "func", fn)) or "").strip().splitlines()
        params = inspect.signature(fn).parameters.values()
        args = [
            f"{p.name}={p.default!r}" if p.default is not inspect.Parameter.empty else p.name
            for p in params
            if p.name not in ("input_shape", "num_classes") and p.kind is not p.VAR_KEYWORD
        ]
        size = ""
        for shape, what in EXAMPLE_SHAPES:  # image models, then sequence models
            try:
                count = sum(p.numel() for p in fn(input_shape=shape, num_classes=10).parameters())
            except Exception as exc:  # a model that needs other inputs still gets listed
                size = size or f"not sized on a {what} ({type(exc).__name__})"
                continue
            size = f"{count:,} parameters on a {what} with 10 classes"
            break
        rows.append({
            "name": name,
            "summary": doc[0] if doc else "",
            "arguments": ", ".join(args) or "none",
            "parameters": size,
        })  # fmt: skip
    return rows
