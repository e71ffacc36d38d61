"""Data sets: a registry of sources (one file per data set, in ``datasets/``), readers for the
original file formats, the offline-first loader and the seeded validation split. Needs numpy,
not torch.

``load_dataset`` reads Fashion-MNIST, MNIST or CIFAR-10 from their original files (offline
first, else torchvision's download) and ``split_train_val`` carves a seeded validation split.
A folder or manifest of your own images is :mod:`hpsearch.data_utils.own_images` (numpy and
Pillow; imported only when used).
"""

from hpsearch.data_utils.arrays import ArraySplit, split_train_val
from hpsearch.data_utils.datasets.fashion_mnist import DEBIAN_FASHION_MNIST_DIR
from hpsearch.data_utils.formats import (
    DataFileError,
    read_cifar_batch,
    read_idx_images,
    read_idx_labels,
)
from hpsearch.data_utils.info import Augmentation, DatasetInfo, ImageShape, Normalization
from hpsearch.data_utils.loading import (
    DATA_DIR_ENV_VAR,
    DataNotFoundError,
    DataOrigin,
    default_data_dir,
    load_dataset,
    load_dataset_with_origin,
)
from hpsearch.data_utils.registry import (
    DatasetSource,
    get_dataset,
    get_dataset_info,
    list_datasets,
    register_dataset,
)

__all__ = [
    "DATA_DIR_ENV_VAR",
    "DEBIAN_FASHION_MNIST_DIR",
    "ArraySplit",
    "Augmentation",
    "DataFileError",
    "DataNotFoundError",
    "DataOrigin",
    "DatasetInfo",
    "DatasetSource",
    "ImageShape",
    "Normalization",
    "default_data_dir",
    "get_dataset",
    "get_dataset_info",
    "list_datasets",
    "load_dataset",
    "load_dataset_with_origin",
    "read_cifar_batch",
    "read_idx_images",
    "read_idx_labels",
    "register_dataset",
    "split_train_val",
]
