"""Data sources, splits and loaders. ``load_data(DataConfig(...), seed)`` is the entry point."""

from typing import TYPE_CHECKING

from dlforge._lazy import lazy_exports

if TYPE_CHECKING:
    from dlforge.data.augment import BatchAugment
    from dlforge.data.config import AugmentConfig, DataConfig, SyntheticConfig
    from dlforge.data.dataset import DataBundle, DataError, RawData, check_features, encode_labels
    from dlforge.data.load import load_data, normalize_splits, read_source, split_data
    from dlforge.data.normalize import apply_normalizer
    from dlforge.data.splits import fit_normalizer, stratified_split

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "augment": ["BatchAugment"],
        "config": ["AugmentConfig", "DataConfig", "SyntheticConfig"],
        "dataset": ["DataBundle", "DataError", "RawData", "check_features", "encode_labels"],
        "load": ["load_data", "normalize_splits", "read_source", "split_data"],
        "normalize": ["apply_normalizer"],
        "splits": ["fit_normalizer", "stratified_split"],
    },
)
