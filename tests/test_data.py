from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dlforge.data import DataConfig, DataError, SyntheticConfig, files, fit_normalizer, load_data


def test_builtin_sources_shapes_and_splits() -> None:
    digits = load_data(DataConfig(source="digits"), seed=0)
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    sizes = digits.summary()["sizes"]
    assert sum(sizes.values()) == 1797 and sizes["test"] == 360
    m1d = load_data(DataConfig(source="mnist1d"), seed=0)
    assert m1d.input_shape == (1, 40)
    assert len(m1d.test[1]) == 1000  # the generator's own test split is kept
    assert len(m1d.train[1]) + len(m1d.val[1]) == 4000


def test_splits_are_seeded_and_stratified() -> None:
    a = load_data(DataConfig(source="digits"), seed=1)
    b = load_data(DataConfig(source="digits"), seed=1)
    c = load_data(DataConfig(source="digits"), seed=2)
    assert np.array_equal(a.test[0].numpy(), b.test[0].numpy())
    assert not np.array_equal(a.test[0].numpy(), c.test[0].numpy())
    counts = np.bincount(a.test[1].numpy(), minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # 10 classes of ~180, 20% each


def test_normalisation_uses_the_training_split_only() -> None:
    cfg = DataConfig(
        source="synthetic", synthetic=SyntheticConfig(n_samples=500, n_features=6, n_informative=4)
    )
    raw = load_data(DataConfig(**{**cfg.__dict__, "normalize": False}), seed=0)
    norm = load_data(cfg, seed=0)
    stats = fit_normalizer(raw.train[0].numpy())
    assert norm.preprocessing["normalize"] == stats
    np.testing.assert_allclose(norm.train[0].mean(0).numpy(), 0, atol=1e-5)
    expected_test = (raw.test[0].numpy() - np.array(stats["mean"])) / np.array(stats["std"])
    np.testing.assert_allclose(norm.test[0].numpy(), expected_test, atol=1e-5)
    # The test split was not used: its mean is not exactly zero.
    assert np.abs(norm.test[0].mean(0).numpy()).max() > 1e-3


def test_synthetic_weights_make_imbalance() -> None:
    cfg = DataConfig(
        source="synthetic",
        synthetic=SyntheticConfig(n_samples=1000, n_classes=2, weights=[0.9, 0.1]),
    )
    counts = np.bincount(load_data(cfg, seed=0).train[1].numpy())
    assert counts[0] > 6 * counts[1]


# --- image folders ----------------------------------------------------------------------------


def write_images(root: Path, classes: dict[str, int], size: int = 10) -> None:
    rng = np.random.default_rng(0)
    for name, n in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / name / f"{i}.png")


def test_image_folder(tmp_path: Path) -> None:
    write_images(tmp_path, {"cat": 6, "dog": 5})
    raw = files.image_folder(tmp_path, (8, 8), "RGB")
    assert raw.x.shape == (11, 3, 8, 8) and raw.class_names == ["cat", "dog"]
    assert raw.x.min() >= 0 and raw.x.max() <= 1
    gray = files.image_folder(tmp_path, (4, 6), "L")
    assert gray.x.shape == (11, 1, 4, 6)
    expected = (
        np.asarray(
            Image.open(tmp_path / "cat" / "0.png")
            .convert("L")
            .resize((6, 4), Image.Resampling.BILINEAR)
        )
        / 255.0
    )
    np.testing.assert_allclose(gray.x[0, 0], expected, atol=1e-6)


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="image folder not found"):
        files.image_folder(tmp_path / "nope", (8, 8))
    write_images(tmp_path, {"a": 2})
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"class folder .*empty holds no images"):
        files.image_folder(tmp_path, (8, 8))
    (tmp_path / "empty" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"corrupt or unreadable image .*broken\.png"):
        files.image_folder(tmp_path, (8, 8))


# --- tables -----------------------------------------------------------------------------------


def frame(n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "f1": rng.normal(size=n),
            "f2": rng.normal(size=n),
            "species": rng.choice(["setosa", "virginica"], n),
        }
    )


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_csv_and_parquet(tmp_path: Path, suffix: str) -> None:
    df = frame()
    path = tmp_path / f"t{suffix}"
    df.to_csv(path, index=False) if suffix == ".csv" else df.to_parquet(path)
    raw = files.table(path, "species")
    assert raw.x.shape == (40, 2) and raw.class_names == ["setosa", "virginica"]
    np.testing.assert_allclose(raw.x[:, 0], df["f1"].to_numpy(), rtol=1e-6)
    assert np.array_equal(raw.y, (df["species"] == "virginica").to_numpy().astype(int))
    bundle = load_data(DataConfig(source="table", path=str(path), label_column="species"))
    assert bundle.input_shape == (2,)


def test_table_errors(tmp_path: Path) -> None:
    df = frame()
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    with pytest.raises(DataError, match="no label column 'specie'.*did you mean 'species'"):
        files.table(path, "specie")
    df.loc[7, "f2"] = np.nan
    df.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"NaN/inf .*rows \[7\].*columns \['f2'\]"):
        files.table(path, "species")
    df["f2"] = "text"
    df.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"feature columns \['f2'\] are not numeric"):
        files.table(path, "species")
    with pytest.raises(DataError, match="table file not found"):
        files.table(tmp_path / "missing.csv", "species")


# --- npz ---------------------------------------------------------------------------------------


def test_npz(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(30, 2, 5)).astype(np.float32)
    y = np.arange(30) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y)
    raw = files.npz(tmp_path / "d.npz")
    assert np.array_equal(raw.x, x) and np.array_equal(raw.y, y)
    np.savez(tmp_path / "k.npz", features=x, y=y)
    with pytest.raises(DataError, match=r"no key 'x' \(keys: \['features', 'y'\]\)"):
        files.npz(tmp_path / "k.npz")
    np.savez(tmp_path / "s.npz", x=x, y=y[:-1])
    with pytest.raises(DataError, match=r"'y' has shape \(29,\) but 'x' has \(30, 2, 5\)"):
        files.npz(tmp_path / "s.npz")
    x[3, 1, 2] = np.inf
    np.savez(tmp_path / "n.npz", x=x, y=y)
    with pytest.raises(DataError, match=r"NaN/inf .*rows \[3\]"):
        files.npz(tmp_path / "n.npz")


# --- CIFAR-10 ------------------------------------------------------------------------------------


def write_cifar(root: Path, protocol: int = 2) -> None:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for name, n in (("data_batch_1", 20), ("data_batch_2", 20), ("test_batch", 10)):
        batch = {
            b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8),
            b"labels": list(rng.integers(0, 10, n)),
        }
        batch[b"labels"] = [int(v) for v in batch[b"labels"]]
        (root / name).write_bytes(pickle.dumps(batch, protocol=protocol))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10(tmp_path: Path, protocol: int) -> None:
    write_cifar(tmp_path, protocol)
    raw = files.cifar10(tmp_path)
    assert (
        raw.x.shape == (40, 3, 32, 32)
        and raw.x_test is not None
        and raw.x_test.shape == (10, 3, 32, 32)
    )
    first = pickle.loads((tmp_path / "data_batch_1").read_bytes())[b"data"][0]
    np.testing.assert_allclose(raw.x[0].reshape(-1), first / 255.0, atol=1e-7)


def test_cifar10_refuses_foreign_pickles(tmp_path: Path) -> None:
    write_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        files.cifar10(tmp_path)


# --- MNIST IDX -----------------------------------------------------------------------------------


def idx_bytes(arr: np.ndarray) -> bytes:
    return (
        struct.pack(">BBBB", 0, 0, 0x08, arr.ndim)
        + struct.pack(f">{arr.ndim}I", *arr.shape)
        + arr.astype(np.uint8).tobytes()
    )


def write_mnist(root: Path, compress: bool) -> None:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for stem, n in (("train", 30), ("t10k", 10)):
        for kind, arr in (
            ("images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28))),
            ("labels-idx1-ubyte", rng.integers(0, 10, n)),
        ):
            data = idx_bytes(arr)
            name = f"{stem}-{kind}" + (".gz" if compress else "")
            (root / name).write_bytes(gzip.compress(data) if compress else data)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx(tmp_path: Path, compress: bool) -> None:
    write_mnist(tmp_path, compress)
    raw = files.mnist_idx(tmp_path)
    assert raw.x.shape == (30, 1, 28, 28) and raw.y_test is not None and len(raw.y_test) == 10
    bundle = load_data(DataConfig(source="mnist_idx", path=str(tmp_path)))
    assert len(bundle.test[1]) == 10


def test_mnist_idx_errors(tmp_path: Path) -> None:
    write_mnist(tmp_path, False)
    labels = tmp_path / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-3])
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: header says shape \(30,\)"):
        files.mnist_idx(tmp_path)
    labels.write_bytes(b"\x12\x34\x56\x78")
    with pytest.raises(DataError, match="bad magic number 12345678"):
        files.mnist_idx(tmp_path)
    other = tmp_path / "other"
    write_mnist(other, False)
    (other / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(DataError, match="no file matching 't10k-images"):
        files.mnist_idx(other)
