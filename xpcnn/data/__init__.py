"""Datasets (MNIST, Fashion-MNIST, see :mod:`.datasets`) and your own images (:mod:`.images`),
as host NumPy arrays."""

from .datasets import (
    CLASS_NAMES,
    DATASETS,
    DEFAULT_ORIGIN,
    IDX_FILES,
    KNOWN_TRAIN_LABELS,
    SHA256,
    SYSTEM_DIRS,
    Dataset,
    keras_cache_dir,
    load_dataset,
    load_idx_dataset,
    load_npz_dataset,
    prepare_images,
    read_idx,
)

__all__ = [
    "CLASS_NAMES",
    "DATASETS",
    "DEFAULT_ORIGIN",
    "Dataset",
    "IDX_FILES",
    "KNOWN_TRAIN_LABELS",
    "SHA256",
    "SYSTEM_DIRS",
    "keras_cache_dir",
    "load_dataset",
    "load_idx_dataset",
    "load_npz_dataset",
    "prepare_images",
    "read_idx",
]
