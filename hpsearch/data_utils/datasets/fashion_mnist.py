"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, arXiv:1708.07747): 28x28 grey images of ten
kinds of clothing, 60,000 for training and 10,000 for testing, in MNIST's IDX format.
https://github.com/zalandoresearch/fashion-mnist
"""

from pathlib import Path

from hpsearch.data_utils.formats import IDX_FILES, read_idx_folder
from hpsearch.data_utils.info import Augmentation, DatasetInfo, ImageShape, Normalization
from hpsearch.data_utils.registry import DatasetSource, register_dataset

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package installs the gzip IDX files."""

INFO = DatasetInfo(
    name="fashion_mnist",
    class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"),
    shape=ImageShape(channels=1, size=28),
    # Over every pixel of the 60,000 training images (0-1 scale), computed from the real
    # train-images-idx3-ubyte.gz: 0.286041 / 0.353024.
    normalization=Normalization(mean=(0.2860,), std=(0.3530,)),
    # Clothes are left-right symmetric as classes.
    augmentation=Augmentation(hflip=True, crop_padding=2),
)

register_dataset(DatasetSource(
    info=INFO, url="https://github.com/zalandoresearch/fashion-mnist",
    files=", ".join(f"{stem}.gz" for stem in IDX_FILES) + " (or their uncompressed forms)",
    read=read_idx_folder, folders=("", "fashion-mnist", "fashion_mnist", "FashionMNIST/raw"),
    torchvision_class="FashionMNIST", download_folder="FashionMNIST/raw",
    system_folders=(DEBIAN_FASHION_MNIST_DIR,),
    install_hint=f"on Debian/Ubuntu, apt-get install dataset-fashion-mnist installs the files "
                 f"to {DEBIAN_FASHION_MNIST_DIR}",
))
