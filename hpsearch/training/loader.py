"""A data loader that keeps the whole split on the device, in the style of airbench's CifarLoader.

The images stay uint8 on the device (a quarter of the float32 memory); each batch is picked by
indexing with a device-side ``randperm``, augmented and normalised with batched tensor ops, so
an epoch involves no per-sample Python work, no host-to-device copy and no host sync. A
:class:`DeviceSplit` is copied to the device once per process and shared by every trial's
loaders (a trial builds its loaders in microseconds, not a copy of the data set).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from hpsearch.data_utils import ArraySplit, Augmentation, Normalization
from hpsearch.training.augment import random_crop, random_hflip

__all__ = ["EVAL_BATCH_SIZE", "DeviceLoader", "DeviceSplit", "make_loader", "normalize",
           "normalizing_affine"]

# Validation and test batches: large, since no gradients are kept.
EVAL_BATCH_SIZE = 1024
NO_AUGMENTATION = Augmentation()


@dataclass(frozen=True)
class DeviceSplit:
    """A split's images and labels on the device, copied once and shared by loaders.

    Attributes:
        images: uint8 tensor (N, C, H, W), pixel values 0-255.
        labels: int64 tensor (N,).
    """

    images: Tensor
    labels: Tensor

    @classmethod
    def of(cls, split: ArraySplit | DeviceSplit, device: torch.device | str) -> DeviceSplit:
        """``split`` on ``device``: copied from host memory, or as it is when it already
        lives there."""
        device = torch.device(device)
        if isinstance(split, DeviceSplit):
            if split.images.device == device or (device.index is None
                                                 and split.images.device.type == device.type):
                return split
            return cls(split.images.to(device), split.labels.to(device))
        return cls(_to_device(split.images, device), _to_device(split.labels, device))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        """Bytes held on the device."""
        return self.images.nbytes + self.labels.nbytes


def normalizing_affine(normalization: Normalization, *, pixel_scale: float,
                       device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Per-channel ``(scale, shift)``, each (1, C, 1, 1), such that
    ``x * scale + shift == (x / pixel_scale - mean) / std``: one fused multiply-add per
    pixel. ``pixel_scale`` is 255 for uint8 pixels, 1 for pixels already in [0, 1]."""
    mean = torch.tensor(normalization.mean, dtype=torch.float64)
    std = torch.tensor(normalization.std, dtype=torch.float64)
    scale = (1.0 / (pixel_scale * std)).to(device=device, dtype=dtype).view(1, -1, 1, 1)
    shift = (-mean / std).to(device=device, dtype=dtype).view(1, -1, 1, 1)
    return scale, shift


@functools.lru_cache(maxsize=32)
def _channel_stats(
    normalization: Normalization, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """:func:`normalizing_affine` of uint8 pixels, built once per statistics, device and
    dtype."""
    return normalizing_affine(normalization, pixel_scale=255.0, device=device, dtype=dtype)


def normalize(
    images_uint8: Tensor, normalization: Normalization, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Convert uint8 pixels to ``(pixel / 255 - mean) / std`` per channel.

    Args:
        images_uint8: uint8 tensor (B, C, H, W), on any device.
        normalization: the per-channel ``mean`` and ``std`` (0-1 pixel scale), C of each.
        dtype: Floating dtype of the result.

    Returns:
        Tensor (B, C, H, W) of ``dtype`` on ``images_uint8.device``, zero mean and unit
        variance per channel over the training set.

    Raises:
        TypeError: If ``images_uint8`` is not uint8 or ``dtype`` is not floating point.
        ValueError: If the channel count does not match the normalisation's.
    """
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images_uint8.dtype}")
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating point type, got {dtype}")
    channels = len(normalization.mean)
    if images_uint8.ndim != 4 or images_uint8.shape[1] != channels:
        raise ValueError(f"expected images (B, {channels}, H, W), got "
                         f"{tuple(images_uint8.shape)}")
    # Compute in at least float32 so half/bfloat16 results are rounded once, not per op.
    compute = torch.promote_types(dtype, torch.float32)
    scale, shift = _channel_stats(normalization, images_uint8.device, compute)
    return torch.addcmul(shift, images_uint8.to(compute), scale).to(dtype)


class DeviceLoader:
    """Iterate over a split held entirely on ``device``.

    Each iteration is one epoch yielding ``(x, y)``: ``x`` of shape (B, C, H, W) and ``dtype``,
    normalised with ``normalization``; ``y`` int64 of shape (B,). When ``shuffle`` is set a new
    ``torch.randperm`` order is drawn on the device every epoch from a generator seeded with
    ``seed``, so the sequence of epochs is reproducible for a given seed and device.

    Args:
        split: images uint8 (N, C, H, W) and labels int64 (N,): a host :class:`ArraySplit`
            (copied to the device) or a :class:`DeviceSplit` already there (shared, not
            copied).
        normalization: the per-channel statistics the images are normalised with.
        augmentation: what ``augment`` may do (random crop with its padding, flips).
        batch_size: Samples per batch; the last batch may be smaller unless ``drop_last``.
        device: Where data lives and batches are produced, e.g. ``"cuda"`` or ``"cpu"``.
        dtype: Floating dtype of the yielded images.
        shuffle: Draw a new random order every epoch; otherwise iterate in stored order.
        augment: Apply ``augmentation`` (random crop after ``crop_padding`` zero pixels, and
            random horizontal flips when ``hflip``) to the uint8 images before normalising.
        drop_last: Skip the final incomplete batch.
        seed: Seed of the device generator used for shuffling and augmentation.
        channels_last: Yield ``x`` in ``torch.channels_last`` memory format.

    Raises:
        ValueError: If ``batch_size < 1``, the split is empty, or its channels do not match
            the normalisation's.
    """

    def __init__(
        self,
        split: ArraySplit | DeviceSplit,
        *,
        normalization: Normalization,
        augmentation: Augmentation = NO_AUGMENTATION,
        batch_size: int,
        device: torch.device | str,
        dtype: torch.dtype = torch.float32,
        shuffle: bool = False,
        augment: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        channels_last: bool = False,
    ) -> None:
        _check_split(split, normalization, batch_size)
        self.normalization, self.augmentation = normalization, augmentation
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.dtype = dtype
        self.shuffle = shuffle
        self.augment = augment
        self.drop_last = drop_last
        self.channels_last = channels_last
        resident = DeviceSplit.of(split, self.device)
        self._images, self._labels = resident.images, resident.labels
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(seed)
        _channel_stats(normalization, self.device,
                       torch.promote_types(dtype, torch.float32))  # pre-build

    @property
    def images(self) -> Tensor:
        """All images, uint8 (N, C, H, W) on the device, unnormalised and unaugmented."""
        return self._images

    @property
    def labels(self) -> Tensor:
        """All labels, int64 (N,) on the device."""
        return self._labels

    def state_dict(self) -> dict[str, Tensor]:
        """The shuffling and augmentation generator's state (a uint8 CPU tensor)."""
        return {"generator": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Continue the epochs' random orders and augmentations from a :meth:`state_dict`
        of a loader on the same kind of device."""
        self._generator.set_state(state["generator"])

    @property
    def num_samples(self) -> int:
        """Number of samples N in the split (including any dropped by ``drop_last``)."""
        return len(self._labels)

    def __len__(self) -> int:
        """Number of batches per epoch."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = None
        if self.shuffle:
            order = torch.randperm(
                self.num_samples, device=self.device, generator=self._generator
            )
        for i in range(len(self)):
            start = i * self.batch_size
            stop = min(start + self.batch_size, self.num_samples)
            # Python-int bounds: slicing never reads a device value back to the host.
            idx: Tensor | slice = order[start:stop] if order is not None else slice(start, stop)
            yield self._make_batch(self._images[idx]), self._labels[idx]

    def _make_batch(self, x: Tensor) -> Tensor:
        if self.augment:
            x = random_crop(x, self.augmentation.crop_padding, generator=self._generator)
            if self.augmentation.hflip:
                x = random_hflip(x, generator=self._generator)
        x = normalize(x, self.normalization, self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def _check_split(split: ArraySplit | DeviceSplit, normalization: Normalization,
                 batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(split) == 0:
        raise ValueError("cannot load an empty split")
    if split.images.shape[1] != len(normalization.mean):
        raise ValueError(f"split has {split.images.shape[1]} channels, the normalisation "
                         f"{len(normalization.mean)}")


def _to_device(array: np.ndarray, device: torch.device) -> Tensor:
    # from_numpy needs a writable, contiguous array; np.require copies only when it is not.
    host = torch.from_numpy(np.require(array, requirements=["C_CONTIGUOUS", "WRITEABLE"]))
    return host.to(device)


def make_loader(split: ArraySplit | DeviceSplit, device: torch.device, *,
                normalization: Normalization, augmentation: Augmentation = NO_AUGMENTATION,
                batch_size: int = EVAL_BATCH_SIZE, train: bool = False, augment: bool = False,
                seed: int = 0) -> DeviceLoader:
    """A device-resident loader yielding channels-last batches (faster convolutions on
    both cuDNN and oneDNN); training loaders shuffle and drop the last partial batch (a
    batch of one breaks batch norm), unless the split is smaller than one batch."""
    return DeviceLoader(split, normalization=normalization, augmentation=augmentation,
                        batch_size=batch_size, device=device,
                        shuffle=train, augment=train and augment,
                        drop_last=train and len(split) >= batch_size, seed=seed,
                        channels_last=True)
