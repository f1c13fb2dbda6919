"""Users' own data from files: image folders, CSV/Parquet tables, .npz, CIFAR-10, MNIST IDX.

Every reader fails with a DataError that names the file and what was wrong with it. Nothing here
unpickles arbitrary objects: ``.npz`` is read with ``allow_pickle=False`` and the CIFAR-10
batches through an unpickler that only admits the few numpy names those files use.
"""

from __future__ import annotations

import difflib
import gzip
import io
import pickle
import struct
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from dlforge.data.dataset import DataError, RawData, check_features, encode_labels

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def _existing(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise DataError(f"{what} not found: {p}")
    return p


# --- class-per-folder images -------------------------------------------------------------------


def image_folder(path: str | Path, size: tuple[int, int], mode: str = "RGB") -> RawData:
    """Images in ``path/<class>/<file>``; resized to ``size`` (H, W); returns (N, C, H, W) in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    root = _existing(path, "image folder")
    if not root.is_dir():
        raise DataError(f"image folder {root} is not a directory")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DataError(f"image folder {root} has no class sub-folders (expected root/<class>/*)")
    if len(class_dirs) < 2:
        raise DataError(
            f"image folder {root} has a single class folder '{class_dirs[0].name}'; a classifier "
            "needs at least two (one sub-folder per class)"
        )
    xs: list[np.ndarray] = []
    ys: list[int] = []
    h, w = size
    for label, class_dir in enumerate(class_dirs):
        files = sorted(f for f in class_dir.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"class folder {class_dir} holds no images ({sorted(IMAGE_SUFFIXES)})")
        for f in files:
            try:
                with Image.open(f) as img:
                    img.load()
                    arr = np.asarray(img.convert(mode).resize((w, h), Image.Resampling.BILINEAR))
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
                raise DataError(f"corrupt or unreadable image {f}: {exc}") from None
            xs.append(arr)
            ys.append(label)
    x = np.stack(xs).astype(np.float32) / 255.0
    x = x[:, None, :, :] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return RawData(x=x, y=np.asarray(ys, dtype=np.int64), class_names=[d.name for d in class_dirs])


# --- tables ---------------------------------------------------------------------------------


def table(
    path: str | Path,
    label_column: str,
    feature_columns: list[str] | None = None,
    group_column: str | None = None,
) -> RawData:
    """A CSV or Parquet table with one label column; every feature column must be numeric."""
    import pandas as pd

    p = _existing(path, "table file")
    suffix = p.suffix.lower()
    try:
        if suffix in {".csv", ".txt"}:
            df = pd.read_csv(p)
        elif suffix in {".parquet", ".pq"}:
            df = pd.read_parquet(p)
        else:
            raise DataError(f"table file {p}: unknown format '{suffix}' (use .csv or .parquet)")
    except DataError:
        raise
    except Exception as exc:  # pandas and pyarrow raise many types for a broken file
        raise DataError(f"table file {p} could not be read: {exc}") from None
    columns = [str(c) for c in df.columns]
    if len(df) == 0:
        raise DataError(f"table file {p} has no rows (columns: {columns})")
    if label_column not in columns:
        close = difflib.get_close_matches(label_column, columns, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise DataError(
            f"table file {p}: no label column '{label_column}' (columns: {columns}){hint}"
        )
    if group_column is not None and group_column not in columns:
        raise DataError(f"table file {p}: no group column '{group_column}' (columns: {columns})")
    features = feature_columns or [c for c in columns if c not in (label_column, group_column)]
    missing = [c for c in features if c not in columns]
    if missing:
        raise DataError(f"table file {p}: feature columns {missing} not found (columns: {columns})")
    non_numeric = [c for c in features if not pd.api.types.is_numeric_dtype(df[c])]
    if non_numeric:
        raise DataError(f"table file {p}: feature columns {non_numeric} are not numeric")
    if df[label_column].isna().any():
        rows = np.flatnonzero(df[label_column].isna().to_numpy())[:10].tolist()
        raise DataError(f"table file {p}: label column '{label_column}' is empty at rows {rows}")
    x = check_features(df[features].to_numpy(), f"table file {p}", columns=features)
    y, names = encode_labels(
        df[label_column].to_numpy(), f"table file {p}, column '{label_column}'"
    )
    groups = df[group_column].to_numpy() if group_column is not None else None
    return RawData(x=x, y=y, class_names=names, groups=groups)


# --- NumPy archives --------------------------------------------------------------------------


def npz(
    path: str | Path, x_key: str = "x", y_key: str = "y", group_key: str | None = None
) -> RawData:
    """A NumPy ``.npz`` holding features (N, ...) and labels (N,) under the given keys."""
    p = _existing(path, "npz file")
    try:
        with np.load(p, allow_pickle=False) as archive:
            keys = list(archive.keys())
            for key in (x_key, y_key, group_key):
                if key is not None and key not in keys:
                    raise DataError(f"npz file {p}: no key '{key}' (keys: {keys})")
            x_raw, y_raw = archive[x_key], archive[y_key]
            groups = archive[group_key] if group_key is not None else None
    except DataError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"npz file {p} could not be read: {exc}") from None
    x = check_features(x_raw, f"npz file {p}, key '{x_key}'")
    if y_raw.ndim != 1 or len(y_raw) != len(x):
        raise DataError(
            f"npz file {p}: '{y_key}' has shape {y_raw.shape} but '{x_key}' has {x.shape}; "
            f"expected labels of shape ({len(x)},)"
        )
    y, names = encode_labels(y_raw, f"npz file {p}, key '{y_key}'")
    if groups is not None and groups.shape != (len(x),):
        raise DataError(f"npz file {p}: '{group_key}' has shape {groups.shape}, not ({len(x)},)")
    return RawData(x=x, y=y, class_names=names, groups=groups)


# --- CIFAR-10 python batches ---------------------------------------------------------------------


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits only the numpy reconstruction helpers a CIFAR-10 batch file uses."""

    ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as fh:
            batch = _NumpyOnlyUnpickler(io.BytesIO(fh.read()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise DataError(f"CIFAR-10 batch {path} could not be read: {exc}") from None
    if not isinstance(batch, dict):
        raise DataError(f"CIFAR-10 batch {path}: expected a dict, got {type(batch).__name__}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    for key in ("data", "labels"):
        if key not in batch:
            raise DataError(f"CIFAR-10 batch {path}: no key '{key}' (keys: {sorted(batch)})")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise DataError(
            f"CIFAR-10 batch {path}: data shape {data.shape} and {len(labels)} labels; "
            "expected (N, 3072) uint8 with N labels"
        )
    return data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0, labels


def cifar10(path: str | Path) -> RawData:
    """The CIFAR-10 python version: a folder with ``data_batch_*`` and ``test_batch``."""
    root = _existing(path, "CIFAR-10 folder")
    train_files = sorted(root.glob("data_batch_*"))
    test_file = root / "test_batch"
    if not train_files:
        raise DataError(f"CIFAR-10 folder {root} has no data_batch_* files")
    if not test_file.exists():
        raise DataError(f"CIFAR-10 folder {root} has no test_batch file")
    parts = [_read_cifar_batch(f) for f in train_files]
    x_test, y_test = _read_cifar_batch(test_file)
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    return RawData(
        x=np.concatenate([p[0] for p in parts]),
        y=np.concatenate([p[1] for p in parts]),
        class_names=names,
        x_test=x_test,
        y_test=y_test,
    )


# --- MNIST IDX ----------------------------------------------------------------------------


_IDX_DTYPES: dict[int, Any] = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed), checking magic number and size."""
    p = _existing(path, "IDX file")
    raw = p.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except OSError as exc:
            raise DataError(f"IDX file {p}: broken gzip stream ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"IDX file {p}: bad magic number {raw[:4].hex()} (not an IDX file)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"IDX file {p}: truncated header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"IDX file {p}: header says shape {dims} ({expected} bytes) "
            f"but {len(raw) - header} bytes follow"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _find_idx(root: Path, stem: str, kind: str) -> Path:
    found = sorted(root.glob(f"{stem}-{kind}*"))
    if not found:
        raise DataError(f"MNIST folder {root}: no file matching '{stem}-{kind}*'")
    return found[0]


def mnist_idx(path: str | Path) -> RawData:
    """MNIST-style IDX files (train-images, train-labels, t10k-images, t10k-labels)."""
    root = _existing(path, "MNIST folder")
    splits = []
    for stem in ("train", "t10k"):
        images_path = _find_idx(root, stem, "images")
        labels_path = _find_idx(root, stem, "labels")
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"MNIST files {images_path.name} {images.shape} and {labels_path.name} "
                f"{labels.shape} do not match: expected (N, H, W) images and (N,) labels"
            )
        splits.append((images.astype(np.float32)[:, None] / 255.0, labels.astype(np.int64)))
    (x, y), (x_test, y_test) = splits
    n_classes = int(max(y.max(), y_test.max())) + 1
    return RawData(
        x=x, y=y, class_names=[str(i) for i in range(n_classes)], x_test=x_test, y_test=y_test
    )
