"""What every loader of hpsearch shares, wherever its split lives: the epoch's order, and one
way of turning uint8 pixels on the device into a batch (augmentation, then normalisation).

:class:`~hpsearch.training.loader.DeviceLoader` (the split resident on the device) and
:class:`~hpsearch.training.streamed.StreamedLoader` (the split in host memory, each batch
copied over) both derive from :class:`SplitLoader`, so for the same seed they draw the same
orders and the same augmentations from the same generator, in the same sequence.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import torch
from torch import Tensor

from hpsearch.data_utils import Augmentation, Normalization
from hpsearch.training.augment import random_crop, random_hflip

__all__ = ["NO_AUGMENTATION", "SplitLoader", "normalize", "normalizing_affine"]

NO_AUGMENTATION = Augmentation()


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
        A new tensor (B, C, H, W) of ``dtype`` on ``images_uint8.device`` (never a view of
        the input), zero mean and unit variance per channel over the training set.

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


class SplitLoader:
    """The part of a loader that does not depend on where its split lives: the batches of an
    epoch, the generator behind its random order and augmentation, and how a batch of uint8
    pixels on the device becomes the model's input (:meth:`_make_batch`).

    Subclasses hold the split and implement ``__iter__``; each iteration is one epoch
    yielding ``(x, y)`` on ``device``: ``x`` (B, C, H, W) of ``dtype``, normalised; ``y``
    int64 (B,). See :class:`~hpsearch.training.loader.DeviceLoader` for the arguments.

    Raises:
        ValueError: If ``batch_size < 1``, the split is empty, or its channels do not match
            the normalisation's.
    """

    def __init__(
        self,
        *,
        num_samples: int,
        channels: int,
        normalization: Normalization,
        augmentation: Augmentation,
        batch_size: int,
        device: torch.device | str,
        dtype: torch.dtype,
        shuffle: bool,
        augment: bool,
        drop_last: bool,
        seed: int,
        channels_last: bool,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_samples == 0:
            raise ValueError("cannot load an empty split")
        if channels != len(normalization.mean):
            raise ValueError(f"split has {channels} channels, the normalisation "
                             f"{len(normalization.mean)}")
        self.normalization, self.augmentation = normalization, augmentation
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.dtype = dtype
        self.shuffle = shuffle
        self.augment = augment
        self.drop_last = drop_last
        self.channels_last = channels_last
        self._num_samples = num_samples
        # One generator on the device draws the order and the augmentation, in that order:
        # the same seed gives the same epochs whichever loader serves them.
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(seed)
        _channel_stats(normalization, self.device,
                       torch.promote_types(dtype, torch.float32))  # pre-build

    def state_dict(self) -> dict[str, Tensor]:
        """The shuffling and augmentation generator's state (a uint8 CPU tensor)."""
        return {"generator": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Continue the epochs' random orders and augmentations from a :meth:`state_dict`
        of a loader on the same kind of device (either kind of loader)."""
        self._generator.set_state(state["generator"])

    @property
    def num_samples(self) -> int:
        """Number of samples N in the split (including any dropped by ``drop_last``)."""
        return self._num_samples

    def __len__(self) -> int:
        """Number of batches per epoch."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        raise NotImplementedError

    def _order(self) -> Tensor | None:
        """This epoch's order: a ``randperm`` (N,) on the device when shuffling, else None
        (stored order). Drawn when the epoch starts, before any augmentation."""
        if not self.shuffle:
            return None
        return torch.randperm(self.num_samples, device=self.device, generator=self._generator)

    def _bounds(self) -> Iterator[tuple[int, int]]:
        """``(start, stop)`` of each batch in the epoch's order."""
        for i in range(len(self)):
            start = i * self.batch_size
            yield start, min(start + self.batch_size, self.num_samples)

    def _make_batch(self, x: Tensor) -> Tensor:
        """uint8 pixels (B, C, H, W) on the device -> the model's input: augmented when
        ``augment``, normalised to ``dtype``, channels-last when asked. The result is a new
        tensor, never a view of ``x`` (a streamed loader reuses ``x``'s memory)."""
        if self.augment:
            x = random_crop(x, self.augmentation.crop_padding, generator=self._generator)
            if self.augmentation.hflip:
                x = random_hflip(x, generator=self._generator)
        x = normalize(x, self.normalization, self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x
