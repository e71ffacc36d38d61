"""A trial's images at a smaller size: downsampled on the device, the same way in training
and in the served model.

A study may search ``image_size`` below the size the data set stores (own images decoded
once at, say, 224 px; a trial at 96 px costs a fifth of the compute). The trial's splits
are downsampled once per size on the device (:meth:`hpsearch.search.session.TrialData
.on_device`) and the served model downsamples each request with the same function
(:class:`hpsearch.serving.classifier.NormalizingClassifier`), so the network sees the same
pixels in both.

The filter is bilinear with antialiasing (``F.interpolate(..., antialias=True)``, PIL's
``BILINEAR`` reduce filter: a triangle filter widened by the scale, so no pixel is skipped),
computed in float32 and rounded to whole 0..255 levels. torch's CPU kernel for uint8 images
is about 20 times faster (4 ms against 92 ms for 64 RGB images from 224 to 96 px, 2 cores),
but it rounds differently (one level apart on 10-16% of the pixels) and CUDA has no uint8
kernel: float32 everywhere keeps one definition on every device. Measured on the same CPU,
a whole split downsampled once costs what one epoch of per-batch downsampling would cost, so
it is done once per size and shared by the trials of that size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CHUNK_IMAGES", "downsample", "downsample_levels"]

# Images per interpolation call: the float32 copy of a chunk is what is held at once
# (256 RGB images at 224 px: 154 MB), not that of the whole split.
CHUNK_IMAGES = 256


def downsample_levels(levels: Tensor, size: int) -> Tensor:
    """Resize float pixel levels to ``size`` x ``size``: antialiased bilinear, rounded.

    Args:
        levels: float tensor (N, C, H, W) of whole pixel levels 0..255, on any device.
        size: the side of the result, pixels; not above H and W.

    Returns:
        float32 tensor (N, C, size, size) of whole levels 0..255 on ``levels.device``.

    Raises:
        ValueError: ``size`` is below 1 or above the images' side.
    """
    _check_size(levels, size)
    out = F.interpolate(levels.float(), size=(size, size), mode="bilinear", antialias=True,
                        align_corners=False)
    return out.round_().clamp_(0.0, 255.0)


def downsample(images: Tensor, size: int) -> Tensor:
    """Resize uint8 images to ``size`` x ``size`` with :func:`downsample_levels`, in chunks of
    :data:`CHUNK_IMAGES`.

    Args:
        images: uint8 tensor (N, C, H, W), on any device.
        size: the side of the result, pixels; not above H and W. Equal to it: ``images``.

    Returns:
        uint8 tensor (N, C, size, size), contiguous, on ``images.device``.

    Raises:
        ValueError: ``size`` is below 1 or above the images' side.
    """
    _check_size(images, size)
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = torch.empty((*images.shape[:2], size, size), dtype=torch.uint8,
                      device=images.device)
    for start in range(0, len(images), CHUNK_IMAGES):
        chunk = images[start:start + CHUNK_IMAGES]
        out[start:start + len(chunk)] = downsample_levels(chunk, size).to(torch.uint8)
    return out


def _check_size(images: Tensor, size: int) -> None:
    if images.ndim != 4:
        raise ValueError(f"expected images (N, C, H, W), got {tuple(images.shape)}")
    if not 1 <= size <= min(images.shape[-2:]):
        raise ValueError(f"image_size {size} must lie in 1..{min(images.shape[-2:])} (the "
                         "images' side): images are downsampled, never enlarged")
