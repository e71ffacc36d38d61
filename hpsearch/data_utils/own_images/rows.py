"""What a cache build takes from each chunk of decoded rows besides writing them: the pixel
sums that give the training split's mean and std, and a fingerprint per row that finds the
candidates for leakage (rows of identical pixels). One array operation each per chunk."""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["channel_sums", "pixel_fingerprints"]


def channel_sums(rows: np.ndarray) -> np.ndarray:
    """int64 (2, C): per channel, the sum and the sum of squares of ``rows``' values.

    Args:
        rows: uint8 (K, C, S, S), channels first; rows that failed are zeros and add nothing.

    Each image's plane is summed in 32 bits (exact while S * S * 255**2 < 2**32, S <= 256;
    64 bits above), then the K totals in 64 bits: twice as fast as summing everything in
    64 bits, and ten times a sum over a channels-last axis.
    """
    k, channels = rows.shape[:2]
    sums = np.zeros((2, channels), np.int64)
    if not k:
        return sums
    planes = rows.reshape(k, channels, -1)
    wide = np.uint32 if planes.shape[2] * 255**2 < 2**32 else np.uint64
    for channel in range(channels):
        plane = planes[:, channel]
        sums[0, channel] = plane.sum(axis=1, dtype=wide).sum(dtype=np.uint64)
        sums[1, channel] = np.square(plane, dtype=np.uint16).sum(axis=1, dtype=wide).sum(
            dtype=np.uint64)
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
