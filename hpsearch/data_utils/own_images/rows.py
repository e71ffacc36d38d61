"""What a cache build does with each chunk of decoded rows: the array the chunk's images are
copied into (:class:`ChunkRows`), and what it takes from the rows besides writing them: the
pixel sums that give the training split's mean and std, and a fingerprint per row that finds
the candidates for leakage (rows of identical pixels). One array operation each per chunk."""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

__all__ = ["BLOCK_BYTES", "ChunkRows", "channel_sums", "pixel_fingerprints"]


class ChunkRows:
    """A chunk's rows, zeros until an image is put there (a file that failed stays zeros).

    The images (``L`` or ``RGB``, ``S`` x ``S``) are pasted by Pillow's core into a Pillow
    image that shares the array's memory (``Image.frombuffer``: ``L``, or ``RGBX`` for RGB,
    which Pillow keeps as 4 bytes a pixel): one copy of each image, where ``Image.tobytes``
    and joining the bytes took 4-7 us for a 96 px image. Where Pillow's image would not
    share the memory (checked by a paste when the array is made), each image's bytes are
    copied in instead.

    Args:
        count: K, the rows.
        image_size: S, pixels.
        channels: 1 or 3.
    """

    def __init__(self, count: int, image_size: int, channels: int) -> None:
        self.channels, self.image_size = channels, image_size
        self.array = np.zeros((count, image_size, image_size, 1 if channels == 1 else 4),
                              np.uint8)
        self._paste = None
        if count:
            mode = "L" if channels == 1 else "RGBX"
            self._view = Image.frombuffer(mode, (image_size, count * image_size), self.array,
                                          "raw", mode, 0, 1)
            self._view.im.paste(Image.new(mode, (1, 1), (1,) * len(mode)).im, (0, 0, 1, 1))
            if self.array[0, 0, 0, 0] == 1:  # the paste reached the array
                self.array[0, 0, 0] = 0
                self._paste = self._view.im.paste

    def put(self, row: int, image: Image.Image) -> None:
        """Row ``row``: ``image``, of ``S`` x ``S`` pixels in ``L`` (1 channel) or ``RGB``."""
        size = self.image_size
        if self._paste is not None:
            self._paste(image.im, (0, row * size, size, (row + 1) * size))
        else:
            self.array[row, ..., :self.channels] = np.frombuffer(
                image.tobytes(), np.uint8).reshape(size, size, self.channels)

    def put_many(self, rows: list[int], pixels: np.ndarray) -> None:
        """Rows ``rows``: uint8 (len(rows), S, S, channels), channels last."""
        self.array[rows, ..., :self.channels] = pixels

    def rows(self) -> np.ndarray:
        """uint8 (K, C, S, S), channels first, in C order."""
        if self.channels == 1:
            return self.array.reshape(len(self.array), 1, self.image_size, self.image_size)
        return np.ascontiguousarray(self.array[..., :3].transpose(0, 3, 1, 2))


BLOCK_BYTES = 1 << 16
"""Rows summed together at most: blocks that stay in the CPU's cache between the sum and the
sum of squares (a whole chunk of 96 px rows, 8 MB, took 9 us an image against 3)."""


def channel_sums(rows: np.ndarray) -> np.ndarray:
    """int64 (2, C): per channel, the sum and the sum of squares of ``rows``' values.

    Args:
        rows: uint8 (K, C, S, S), channels first; rows that failed are zeros and add nothing.

    Each image's plane is summed in 32 bits (exact while S * S * 255**2 < 2**32, S <= 256;
    64 bits above), then the totals in 64 bits: twice as fast as summing everything in 64
    bits, and ten times a sum over a channels-last axis; rows a block of
    :data:`BLOCK_BYTES` at a time.
    """
    k, channels = rows.shape[:2]
    sums = np.zeros((2, channels), np.int64)
    if not k:
        return sums
    planes = rows.reshape(k, channels, -1)
    wide = np.uint32 if planes.shape[2] * 255**2 < 2**32 else np.uint64
    step = max(1, BLOCK_BYTES // planes[0].nbytes)
    for channel in range(channels):
        total = squares = 0
        for first in range(0, k, step):
            plane = planes[first:first + step, channel]
            total += int(plane.sum(axis=1, dtype=wide).sum(dtype=np.uint64))
            squares += int(np.square(plane, dtype=np.uint16).sum(axis=1, dtype=wide).sum(
                dtype=np.uint64))
        sums[:, channel] = total, squares
    return sums


def pixel_fingerprints(rows: np.ndarray) -> np.ndarray:
    """uint64 (K,): a 64-bit fingerprint of each row's pixels; identical rows share one.

    A weighted sum of the row's bytes read as 64-bit words, modulo 2**64, with fixed random
    odd weights: one array operation for a chunk (0.4 us for a 96 px image, where SHA-256
    per row cost 5 us). Rows of different pixels share one rarely (about 2**-64 a pair);
    leakage is only ever reported after comparing the rows themselves (see the build).
    """
    flat = rows.reshape(len(rows), -1)
    if flat.shape[1] % 8:
        flat = np.pad(flat, ((0, 0), (0, -flat.shape[1] % 8)))
    words = np.ascontiguousarray(flat).view("<u8")
    return np.einsum("ij,j->i", words, _weights(words.shape[1]))


@functools.lru_cache(maxsize=8)
def _weights(n: int) -> np.ndarray:
    return np.random.default_rng(0x5EED).integers(0, 2**63, n, dtype=np.uint64) * 2 + 1
