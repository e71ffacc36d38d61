"""CIFAR-10 (Krizhevsky 2009): 32x32 colour images of ten classes, 50,000 for training and
10,000 for testing, as python pickle batches. https://www.cs.toronto.edu/~kriz/cifar.html
"""

from hpsearch.data_utils.formats import CIFAR_DIRNAME, read_cifar_folder
from hpsearch.data_utils.info import Augmentation, DatasetInfo, ImageShape, Normalization
from hpsearch.data_utils.registry import DatasetSource, register_dataset

# mean/std: the widely published per-channel statistics over every training pixel (0-1).
INFO = DatasetInfo(
    name="cifar10",
    class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck"),
    shape=ImageShape(channels=3, size=32),
    normalization=Normalization(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
    augmentation=Augmentation(hflip=True, crop_padding=4))

register_dataset(DatasetSource(
    info=INFO, url="https://www.cs.toronto.edu/~kriz/cifar.html", read=read_cifar_folder,
    files=f"the folder {CIFAR_DIRNAME}/ (data_batch_1 .. data_batch_5 and test_batch, "
          "extracted from cifar-10-python.tar.gz)",
    folders=(CIFAR_DIRNAME, ""), torchvision_class="CIFAR10", download_folder=CIFAR_DIRNAME))
