"""Checkpoints: weights in safetensors, metadata in JSON, never pickle, always atomic.

A checkpoint ``best.safetensors`` carries its metadata (model name and kwargs, recipe,
preprocessing, versions) in the safetensors header, and the same JSON beside it as
``best.json`` for people. Training state for an exact resume (the model's weights, optimizer,
schedule, scaler, RNG, epoch, step) goes to ``last.state.safetensors``: its tensors in the body,
everything else as JSON in the header. Resuming needs that one file only, so a kill between two
writes can never leave a pair of files at different steps. Each file is written to a temporary
name in the same folder (``.NAME.dlforge-XXXX.tmp``), given the usual file mode and renamed, so a
crash leaves the previous file whole; ``remove_stray_temps`` clears what a kill left behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from dlforge.config import DlforgeError, to_dict

META_KEY = "dlforge"
TEMP_MARK = ".dlforge-"  # in every temporary name we write, so a clean-up touches only ours


class CheckpointError(DlforgeError, ValueError):
    """A checkpoint is missing, corrupt or does not match the model; the message names the file."""


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARK}", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # After writing: some writers (safetensors) replace the file and leave it 0600.
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)  # the rename itself survives a power cut
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stray_temps(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Delete the temporary files a killed ``atomic_write`` left in ``folder``; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = f".*{TEMP_MARK}*.tmp"
    found = folder.rglob(pattern) if recursive else folder.glob(pattern)
    removed = []
    for p in found:
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    def write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    return atomic_write(path, write)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_dict(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


# --- tensors inside nested state (optimizer, RNG) ------------------------------------------------


def split_tensors(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace each tensor in nested dicts/lists with a reference; collect tensors by name.

    Dicts with non-string keys (the optimizer's per-parameter state is keyed by int) are kept as
    item lists so JSON does not turn the keys into strings.
    """
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: split_tensors(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}
        return {
            "__items__": [[k, split_tensors(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]
        }
    if isinstance(obj, list | tuple):
        return [split_tensors(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    return obj


def join_tensors(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__items__"}:
            return {k: join_tensors(v, tensors) for k, v in obj["__items__"]}
        return {k: join_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join_tensors(v, tensors) for v in obj]
    return obj


# --- model checkpoints ---------------------------------------------------------------------


def _check_finite(model: nn.Module) -> None:
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"refusing to save non-finite weights (tensor '{name}')")


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write ``model``'s weights and ``meta`` to ``path`` (.safetensors) and ``path``.json."""
    _check_finite(model)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # Tied weights share storage; safetensors refuses aliases, so give each its own copy.
    seen: set[int] = set()
    for k, v in state.items():
        if v.untyped_storage().data_ptr() in seen:
            state[k] = v.clone()
        seen.add(state[k].untyped_storage().data_ptr())
    header = {META_KEY: json.dumps(meta, default=_json_default)}
    path = atomic_write(path, lambda tmp: save_file(state, tmp, metadata=header))
    atomic_write_json(Path(path).with_suffix(".json"), meta)
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    """The JSON object in a checkpoint's header; anything else is a CheckpointError naming it."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        with safe_open(str(p), framework="pt") as fh:
            header = fh.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for a broken header
        raise CheckpointError(f"checkpoint {p} is not a readable safetensors file: {exc}") from None
    if META_KEY not in header:
        raise CheckpointError(f"checkpoint {p} has no dlforge metadata (not written by dlforge?)")
    try:
        meta = json.loads(header[META_KEY])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint {p}: its metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(
            f"checkpoint {p}: its metadata must be a JSON object, got {type(meta).__name__}"
        )
    return meta


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} could not be read: {exc}") from None


def load_weights(path: str | Path, model: nn.Module, strict: bool = True) -> nn.Module:
    """Load a checkpoint's weights into ``model``; mismatches are errors naming the tensors."""
    return load_state(model, read_tensors(path), str(path), strict)


def load_state(
    model: nn.Module, state: dict[str, torch.Tensor], where: str, strict: bool = True
) -> nn.Module:
    """``model.load_state_dict(state)`` with errors that name ``where`` and the tensors."""
    own = model.state_dict()
    if strict:
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise CheckpointError(
                f"checkpoint {where} does not fit the model: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            raise CheckpointError(
                f"checkpoint {where}: tensor '{k}' has shape {tuple(v.shape)}, "
                f"the model expects {tuple(own[k].shape)}"
            )
    model.load_state_dict(state, strict=strict)
    return model


# --- training state ---------------------------------------------------------------------


def save_train_state(path: str | Path, state: dict[str, Any]) -> Path:
    tensors: dict[str, torch.Tensor] = {}
    skeleton = split_tensors(state, "s", tensors)
    header = {META_KEY: json.dumps(skeleton, default=_json_default)}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def load_train_state(path: str | Path) -> dict[str, Any]:
    skeleton = read_meta(path)
    tensors = read_tensors(path)
    try:
        return join_tensors(skeleton, tensors)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"training state {path} is inconsistent ({exc!r})") from None
