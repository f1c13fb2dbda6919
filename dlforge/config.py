"""Typed configuration: dataclasses built from plain dicts with errors that name the key.

Every config in dlforge is a dataclass with working defaults. ``from_dict`` turns the nested dict
of a YAML recipe into those dataclasses, checking types and refusing unknown keys with the
closest valid name, so a typo such as ``lrr`` fails loudly instead of being ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")


class DlforgeError(Exception):
    """Base of the errors dlforge expects from bad input: the CLI prints them as one line."""


class ConfigError(DlforgeError, ValueError):
    """A recipe or config value is wrong; the message names the key path and the value.

    ``key`` is the field's path relative to where the error was raised; ``from_dict`` prefixes
    the path of the enclosing section, so ``--set train.epochs=-1`` reports ``train.epochs``.
    ``owner`` names the config class when the error comes from Python code, not a recipe.
    """

    def __init__(self, reason: str, key: str | None = None, owner: str | None = None) -> None:
        self.reason, self.key, self.owner = reason, key, owner
        where = f"{owner}.{key}" if owner and key else key
        super().__init__(f"{where}: {reason}" if where else reason)

    def under(self, path: str) -> ConfigError:
        """The same error with ``path`` (a recipe section) in front of its key."""
        key = ".".join(k for k in (path, self.key) if k) or None
        return ConfigError(self.reason, key)


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(valid))}"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert it (dicts to dataclasses)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors: list[ConfigError] = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{value!r} fits none of {_type_name(tp)}", path)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{value!r} is not one of {list(allowed)}{hint}", path)
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):  # built (and validated) in Python already
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping for {tp.__name__}, got {value!r}", path)
        return from_dict(tp, value, path)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"expected a list, got {value!r}", path)
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping, got {value!r}", path)
        return dict(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"expected a number, got {value!r}", path) from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"expected a number, got {value!r}", path)
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"expected an integer, got {value!r}", path)
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {value!r}", path)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"expected a string, got {value!r}", path)
        return value
    raise ConfigError(f"unsupported annotation {_type_name(tp)}", path)


def _unknown_key(cls: Any, key: str, key_path: str, valid: list[str]) -> ConfigError:
    """An unknown key; for a key an older dlforge had, what to write instead (``MOVED``)."""
    moved: dict[str, str] = getattr(cls, "MOVED", {})
    if key in moved:
        parent = key_path.rpartition(".")[0]
        new = f"{parent}.{moved[key]}" if parent else moved[key]
        return ConfigError(f"'{key_path}' is no longer a key: write '{new}' instead")
    return ConfigError(f"unknown key '{key_path}'{_suggest(key, valid)}")


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """Resolved field annotations of ``cls``, cached: resolving them is the slow part."""
    if cls not in _HINTS:
        _HINTS[cls] = get_type_hints(cls)
    return _HINTS[cls]


def from_dict(cls: type[T], data: dict[str, Any], path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ConfigError."""
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise _unknown_key(cls, str(key), key_path, list(fields))
        kwargs[key] = _convert(value, hints[key], key_path)
    try:
        obj = cls(**kwargs)
        if not isinstance(obj, Config):  # a plain dataclass: its rules run here
            validate = getattr(obj, "validate", None)
            if callable(validate):
                validate()
    except ConfigError as exc:
        raise exc.under(path) from None
    return obj


class Config:
    """Base of every config dataclass: built from Python, it fails as the same recipe would.

    On construction each field is checked against its annotation (an int widens to a float, a
    mapping becomes the nested config, a ``Literal`` refuses other values) and ``validate()``
    runs the cross-field rules. Without this, ``OptimizerConfig(name="sgdd")`` built in Python
    trained silently with the fallback optimizer.
    """

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        try:
            for f in dataclasses.fields(self):  # type: ignore[arg-type]
                value = getattr(self, f.name)
                converted = _convert(value, hints[f.name], f.name)
                if converted is not value:
                    object.__setattr__(self, f.name, converted)
            self.validate()
        except ConfigError as exc:
            raise ConfigError(exc.reason, exc.key, type(self).__name__) from None

    def validate(self) -> None:
        """Rules between fields; raise ``ConfigError(reason, key)`` naming the field."""


def check(condition: bool, key: str, value: Any, rule: str) -> None:
    """Raise ``ConfigError`` naming ``key`` and ``value`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{rule}, got {value!r}", key)


def to_dict(obj: Any) -> Any:
    """Dataclass (nested) to plain dict/list values, suitable for YAML or JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def set_path(data: dict[str, Any], dotted: str, value: Any, cls: type | None = None) -> None:
    """Set ``a.b.c = value`` in a nested dict, checking each key against ``cls``'s fields.

    Keys under a free-form mapping (``dict[str, Any]``, such as ``model.kwargs``) are not checked
    here; the code that consumes them does.
    """
    keys = dotted.split(".")
    node = data
    tp: Any = cls
    for depth, key in enumerate(keys):
        where = ".".join(keys[: depth + 1])
        if tp is not None and dataclasses.is_dataclass(tp):
            names = [f.name for f in dataclasses.fields(tp)]
            if key not in names:
                raise _unknown_key(tp, key, where, names)
            tp = _unwrap_optional(get_type_hints(tp)[key])
        else:
            tp = None
        if depth == len(keys) - 1:
            node[key] = value
        else:
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child


def _unwrap_optional(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        non_none = [a for a in get_args(tp) if a is not type(None)]
        if len(non_none) == 1:
            return non_none[0]
    return tp


__all__ = ["Config", "ConfigError", "DlforgeError", "check", "from_dict", "set_path", "to_dict"]
