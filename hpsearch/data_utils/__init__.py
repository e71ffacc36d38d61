"""Data sets, device-resident loading and batched augmentation for hpsearch.

``load_dataset`` reads the original Fashion-MNIST, MNIST or CIFAR-10 files (offline first),
``split_train_val`` carves a seeded validation split, and ``DeviceLoader`` serves normalised,
optionally augmented batches from uint8 tensors kept on the training device.
"""

from hpsearch.data_utils.augment import random_crop, random_hflip
from hpsearch.data_utils.datasets import (
    DATA_DIR_ENV_VAR,
    DATASETS,
    DEBIAN_FASHION_MNIST_DIR,
    ArraySplit,
    DataNotFoundError,
    DatasetInfo,
    default_data_dir,
    get_dataset_info,
    load_dataset,
    read_cifar_batch,
    read_idx_images,
    read_idx_labels,
    split_train_val,
)
from hpsearch.data_utils.images import MAX_BATCH, InvalidImages, accepted_shapes, to_unit_batch
from hpsearch.data_utils.loader import DeviceLoader, normalize

__all__ = [
    "MAX_BATCH",
    "DATASETS",
    "DATA_DIR_ENV_VAR",
    "DEBIAN_FASHION_MNIST_DIR",
    "ArraySplit",
    "DataNotFoundError",
    "DatasetInfo",
    "DeviceLoader",
    "InvalidImages",
    "accepted_shapes",
    "default_data_dir",
    "get_dataset_info",
    "load_dataset",
    "normalize",
    "random_crop",
    "random_hflip",
    "read_cifar_batch",
    "read_idx_images",
    "read_idx_labels",
    "split_train_val",
    "to_unit_batch",
]
