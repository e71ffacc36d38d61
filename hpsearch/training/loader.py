"""Loaders of a split: resident on the device (:class:`DeviceLoader`, in the style of
airbench's CifarLoader) or streamed from host memory (:class:`StreamedLoader`), and
:func:`plan_residency`, which decides between them.

Resident, the images stay uint8 on the device (a quarter of the float32 memory); each batch
is picked by indexing with a device-side ``randperm``, augmented and normalised with batched
tensor ops, so an epoch involves no per-sample Python work, no host-to-device copy and no
host sync. A :class:`DeviceSplit` is copied to the device once per process and shared by
every trial's loaders (a trial builds its loaders in microseconds, not a copy of the data
set). A split too large for the device is streamed instead: the same batches, each gathered
on the host and copied over while the previous one trains.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from hpsearch.data_utils import ArraySplit, Augmentation, Normalization
from hpsearch.training.batches import (
    NO_AUGMENTATION,
    SplitLoader,
    normalize,
    normalizing_affine,
)
from hpsearch.training.residency import Residency, plan_residency
from hpsearch.training.streamed import StreamedLoader

__all__ = ["EVAL_BATCH_SIZE", "DeviceLoader", "DeviceSplit", "Residency", "SplitLoader",
           "StreamedLoader", "make_loader", "normalize", "normalizing_affine",
           "plan_residency"]

# Validation and test batches: large, since no gradients are kept.
EVAL_BATCH_SIZE = 1024


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


class DeviceLoader(SplitLoader):
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
        super().__init__(num_samples=len(split), channels=split.images.shape[1],
                         normalization=normalization, augmentation=augmentation,
                         batch_size=batch_size, device=device, dtype=dtype, shuffle=shuffle,
                         augment=augment, drop_last=drop_last, seed=seed,
                         channels_last=channels_last)
        resident = DeviceSplit.of(split, self.device)
        self._images, self._labels = resident.images, resident.labels

    @property
    def images(self) -> Tensor:
        """All images, uint8 (N, C, H, W) on the device, unnormalised and unaugmented."""
        return self._images

    @property
    def labels(self) -> Tensor:
        """All labels, int64 (N,) on the device."""
        return self._labels

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = self._order()
        for start, stop in self._bounds():
            # Python-int bounds: slicing never reads a device value back to the host.
            idx: Tensor | slice = order[start:stop] if order is not None else slice(start, stop)
            yield self._make_batch(self._images[idx]), self._labels[idx]


def _to_device(array: np.ndarray, device: torch.device) -> Tensor:
    # from_numpy needs a writable, contiguous array; np.require copies only when it is not.
    host = torch.from_numpy(np.require(array, requirements=["C_CONTIGUOUS", "WRITEABLE"]))
    return host.to(device)


def make_loader(split: ArraySplit | DeviceSplit, device: torch.device, *,
                normalization: Normalization, augmentation: Augmentation = NO_AUGMENTATION,
                batch_size: int = EVAL_BATCH_SIZE, train: bool = False, augment: bool = False,
                seed: int = 0, stream: bool = False) -> DeviceLoader | StreamedLoader:
    """A loader yielding channels-last batches (faster convolutions on both cuDNN and
    oneDNN); training loaders shuffle and drop the last partial batch (a batch of one breaks
    batch norm), unless the split is smaller than one batch.

    Args:
        split: a host :class:`ArraySplit`, or (not with ``stream``) a :class:`DeviceSplit`.
        device: where the batches are produced.
        normalization: the per-channel statistics (see :class:`DeviceLoader`).
        augmentation: what ``augment`` may do.
        batch_size: images per batch.
        train: shuffle every epoch and drop the last partial batch.
        augment: with ``train``, apply ``augmentation``.
        seed: the loader's generator (order and augmentation).
        stream: keep the split in host memory and copy each batch over
            (:class:`StreamedLoader`, for a split :func:`plan_residency` finds too large);
            else copy the split to the device once (:class:`DeviceLoader`). Both yield the
            same batches for the same seed.

    Raises:
        TypeError: ``stream`` with a :class:`DeviceSplit`.
        ValueError: see :class:`DeviceLoader`.
    """
    kind = StreamedLoader if stream else DeviceLoader
    return kind(split, normalization=normalization, augmentation=augmentation,
                batch_size=batch_size, device=device, shuffle=train, augment=train and augment,
                drop_last=train and len(split) >= batch_size, seed=seed, channels_last=True)
