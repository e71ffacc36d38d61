"""MNIST (LeCun et al. 1998): 28x28 grey images of handwritten digits, 60,000 for training
and 10,000 for testing, in the IDX format. http://yann.lecun.com/exdb/mnist/
"""

from hpsearch.data_utils.formats import IDX_FILES, read_idx_folder
from hpsearch.data_utils.info import Augmentation, DatasetInfo, ImageShape, Normalization
from hpsearch.data_utils.registry import DatasetSource, register_dataset

# mean/std: the widely published statistics over every training pixel (0-1 scale).
INFO = DatasetInfo(name="mnist", class_names=tuple(str(digit) for digit in range(10)),
                   shape=ImageShape(channels=1, size=28),
                   normalization=Normalization(mean=(0.1307,), std=(0.3081,)),
                   # No flips: a mirrored digit is not the same digit (2, 3, 5, 7 ...).
                   augmentation=Augmentation(hflip=False, crop_padding=2))

register_dataset(DatasetSource(
    info=INFO, url="http://yann.lecun.com/exdb/mnist/", read=read_idx_folder,
    files=", ".join(f"{stem}.gz" for stem in IDX_FILES) + " (or their uncompressed forms)",
    folders=("", "mnist", "MNIST/raw"), torchvision_class="MNIST",
    download_folder="MNIST/raw"))
