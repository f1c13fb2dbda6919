"""Built-in data that needs no download: scikit-learn digits, MNIST-1D, synthetic tables."""

from __future__ import annotations

import numpy as np

from dlforge.data.config import SyntheticConfig
from dlforge.data.dataset import RawData


def digits() -> RawData:
    """scikit-learn's 1797 real 8x8 handwritten digits, as (N, 1, 8, 8) images."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.float32)[:, None, :, :] / 16.0
    return RawData(x=x, y=d.target.astype(np.int64), class_names=[str(i) for i in range(10)])


def mnist1d(num_samples: int = 5000, seed: int = 42) -> RawData:
    """MNIST-1D (Greydanus, 2020) generated offline; signals are (N, 1, 40).

    The package ships the generator, so nothing is downloaded. Its own 80/20 split is kept as
    the test split so accuracies compare with the paper's table.
    """
    import mnist1d.data as m1d

    args = m1d.get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    state = np.random.get_state()  # the generator reseeds numpy's global RNG; restore it
    try:
        d = m1d.make_dataset(args)
    finally:
        np.random.set_state(state)
    return RawData(
        x=d["x"].astype(np.float32)[:, None, :],
        y=np.asarray(d["y"], dtype=np.int64),
        class_names=[str(i) for i in range(10)],
        x_test=d["x_test"].astype(np.float32)[:, None, :],
        y_test=np.asarray(d["y_test"], dtype=np.int64),
    )


def synthetic(cfg: SyntheticConfig, seed: int) -> RawData:
    """A tabular problem from ``make_classification``; ``weights`` makes it imbalanced."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=cfg.n_samples,
        n_features=cfg.n_features,
        n_informative=cfg.n_informative,
        n_redundant=min(2, cfg.n_features - cfg.n_informative),
        n_classes=cfg.n_classes,
        weights=cfg.weights,
        class_sep=cfg.class_sep,
        random_state=seed,
    )
    return RawData(
        x=x.astype(np.float32),
        y=y.astype(np.int64),
        class_names=[str(i) for i in range(cfg.n_classes)],
    )
