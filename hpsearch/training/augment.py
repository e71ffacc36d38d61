"""Batched data augmentation on device tensors.

Each function transforms a whole batch with a few tensor ops and draws its random numbers on
the batch's own device, so augmentation never loops over samples in Python and never waits
for the host.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["random_crop", "random_hflip"]


def random_crop(
    images: Tensor, padding: int, *, generator: torch.Generator | None = None
) -> Tensor:
    """Zero-pad each image and crop it back to its size at an independent random offset.

    This is the standard "pad and random crop" translation augmentation: each image is shifted
    by up to ``padding`` pixels in each direction and the uncovered border is filled with 0.

    Args:
        images: Batch of shape (B, C, H, W), any dtype (usually uint8 before normalisation).
        padding: Zero padding added on every side, in pixels; 0 returns ``images`` unchanged.
        generator: Random generator on ``images.device``; None uses the global one.

    Returns:
        A new tensor of the same shape, dtype and device as ``images``.

    Raises:
        ValueError: If ``padding`` is negative or ``images`` is not 4-D.
    """
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
    if padding == 0:
        return images
    b, c, h, w = images.shape
    device = images.device
    # new_zeros + slice assignment pads any dtype (F.pad's constant mode is not available
    # for every integer dtype on every backend).
    padded = images.new_zeros((b, c, h + 2 * padding, w + 2 * padding))
    padded[:, :, padding : padding + h, padding : padding + w] = images
    dy = torch.randint(0, 2 * padding + 1, (b,), device=device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b,), device=device, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=device))[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b, device=device)[:, None, None, None]
    chans = torch.arange(c, device=device)[None, :, None, None]
    # The four index tensors broadcast to (B, C, H, W): one gather for the whole batch.
    return padded[batch, chans, rows, cols]


def random_hflip(images: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """Mirror each image left-right with probability 0.5, independently per image.

    Args:
        images: Batch of shape (B, C, H, W), any dtype.
        generator: Random generator on ``images.device``; None uses the global one.

    Returns:
        A new tensor of the same shape, dtype and device as ``images``.

    Raises:
        ValueError: If ``images`` is not 4-D.
    """
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
    flip = torch.randint(0, 2, (images.shape[0],), device=images.device, generator=generator)
    return torch.where(flip.bool()[:, None, None, None], images.flip(-1), images)
