"""Turning what clients send (pixel arrays in several layouts and dtypes) into one checked
batch, for the served model and ``hpsearch predict``.

Accepted per image, for a data set of C channels and size S:

- grayscale (C = 1): (S, S), (1, S, S) or (S, S, 1);
- colour (C = 3): (S, S, 3) or (3, S, S);
- integers are pixel values 0..255 (uint8 images); floats are values in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hpsearch.data_utils import ImageShape

__all__ = ["MAX_BATCH", "PIXELS_COLUMN", "InvalidImages", "accepted_shapes",
           "check_batch_size", "to_unit_batch"]

# The served model's column of pixel arrays (the column of image files is image_files').
PIXELS_COLUMN = "images"

# Most images one request may carry: 1024 Fashion-MNIST images are ~3 MB of JSON integers;
# larger batches gain no throughput on a CPU and risk the server's memory.
MAX_BATCH = 1024


class InvalidImages(ValueError):
    """A batch that cannot be classified; the message says what was expected."""


def accepted_shapes(shape: ImageShape) -> list[tuple[int, ...]]:
    """Per-image layouts accepted for images of ``shape`` (channels first listed first)."""
    c, s = shape.channels, shape.size
    return [(s, s), (1, s, s), (s, s, 1)] if c == 1 else [(s, s, c), (c, s, s)]


def check_batch_size(n: int, max_batch: int = MAX_BATCH) -> None:
    """A request's number of images, pixel arrays or files alike.

    Raises:
        InvalidImages: none, or more than ``max_batch``.
    """
    if n == 0:
        raise InvalidImages("empty batch: send at least one image")
    if n > max_batch:
        raise InvalidImages(f"batch of {n} images exceeds the maximum of {max_batch} per "
                            "request; split it")


def to_unit_batch(images: np.ndarray | Sequence[Any], shape: ImageShape,
                  *, max_batch: int = MAX_BATCH) -> np.ndarray:
    """Validate a batch of images and return float32 (N, C, S, S) pixel values in [0, 1].

    Args:
        images: an array (N, ...) or a sequence of N per-image arrays / nested lists, each
            in one of :func:`accepted_shapes`; integer pixels 0..255 or float pixels 0..1.
        shape: the shape of the images the model was trained on.
        max_batch: most images accepted at once.

    Raises:
        InvalidImages: empty batch, too many images, non-numeric values, a wrong shape,
            NaN or infinite values, or values out of range; the message names the image.
    """
    check_batch_size(len(images), max_batch)
    if isinstance(images, np.ndarray) and images.dtype != object:
        return _check_array(images, shape, "images", batch=True)
    return np.stack([_check_array(_as_array(img, i), shape, f"image {i}", batch=False)
                     for i, img in enumerate(images)])


def _as_array(image: Any, index: int) -> np.ndarray:
    try:
        array = np.asarray(image)
    except ValueError:  # ragged nested lists
        raise InvalidImages(f"image {index}: rows of unequal length") from None
    return array


def _check_array(array: np.ndarray, shape: ImageShape, what: str, *,
                 batch: bool) -> np.ndarray:
    expected = accepted_shapes(shape)
    if array.dtype == bool or array.dtype.kind not in "iuf":
        raise InvalidImages(f"{what}: pixel values must be numbers (integers 0..255 or floats "
                            f"0..1), got {_kind_name(array)}")
    layout = array.shape[1:] if batch else array.shape
    if layout not in expected:
        listed = ", ".join(str(s) for s in expected)
        prefix = "(N, ...) with ... one of " if batch else ""
        raise InvalidImages(f"{what}: shape {array.shape} is not {prefix}{listed}")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise InvalidImages(f"{what}: contains NaN or infinite values")
        if array.min() < 0.0 or array.max() > 1.0:
            raise InvalidImages(f"{what}: float pixel values must lie in [0, 1], got "
                                f"{array.min():g}..{array.max():g} (send 0..255 as integers)")
        unit = array.astype(np.float32)
    else:
        if array.min() < 0 or array.max() > 255:
            raise InvalidImages(f"{what}: integer pixel values must lie in 0..255, got "
                                f"{array.min()}..{array.max()}")
        unit = array.astype(np.float32) / 255.0
    return _channels_first(unit, shape, batch)


def _channels_first(unit: np.ndarray, shape: ImageShape, batch: bool) -> np.ndarray:
    lead = 1 if batch else 0
    if unit.ndim == lead + 2:  # (S, S): add the channel axis
        return np.expand_dims(unit, lead)
    if unit.shape[lead] != shape.channels:  # channels last
        return np.moveaxis(unit, -1, lead)
    return unit


def _kind_name(array: np.ndarray) -> str:
    if array.dtype.kind in "US":
        return "strings"
    if array.dtype == object:
        return "mixed or non-numeric values"
    return str(array.dtype)
