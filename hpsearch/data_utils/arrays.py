"""A split of a data set as two host arrays, and the seeded train/validation split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ArraySplit", "split_train_val"]


@dataclass(frozen=True)
class ArraySplit:
    """One split of a data set, held in host memory.

    Attributes:
        images: uint8 array of shape (N, C, H, W), pixel values 0-255.
        labels: int64 array of shape (N,), class indices.

    Raises:
        TypeError: If ``images`` is not uint8 or ``labels`` is not an integer array.
        ValueError: If the shapes are not (N, C, H, W) and (N,) with the same N.
    """

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8:
            raise TypeError(f"images must be uint8, got {self.images.dtype}")
        if not np.issubdtype(self.labels.dtype, np.integer):
            raise TypeError(f"labels must be an integer array, got {self.labels.dtype}")
        if self.images.ndim != 4 or self.labels.ndim != 1:
            raise ValueError(
                f"expected images (N, C, H, W) and labels (N,), got shapes "
                f"{self.images.shape} and {self.labels.shape}"
            )
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        # Normalise the label dtype once here so every consumer can rely on int64.
        object.__setattr__(self, "labels", self.labels.astype(np.int64, copy=False))

    def __len__(self) -> int:
        return len(self.labels)


def split_train_val(
    train: ArraySplit,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    train_subset: int | None = None,
) -> tuple[ArraySplit, ArraySplit]:
    """Carve a validation split out of the official training split.

    A permutation drawn from ``numpy.random.default_rng(seed)`` puts its first
    ``round(N * val_fraction)`` indices in validation and the rest in training, so the same
    seed always gives the same, disjoint split and the test split is never touched.

    Args:
        train: The official training split (N images).
        val_fraction: Fraction of N used for validation, strictly between 0 and 1.
        seed: Seed of the permutation.
        train_subset: If given, keep only the first ``train_subset`` of the remaining training
            images (all of them if fewer remain); the validation split stays full size.

    Returns:
        ``(train, val)`` as new :class:`ArraySplit` objects (copies).

    Raises:
        ValueError: If ``val_fraction`` is not in (0, 1), ``train_subset < 1``, or the split
            would leave the training or validation part empty.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if train_subset is not None and train_subset < 1:
        raise ValueError(f"train_subset must be >= 1, got {train_subset}")
    n = len(train)
    n_val = round(n * val_fraction)
    if n_val == 0 or n_val == n:
        raise ValueError(
            f"val_fraction={val_fraction} of {n} samples leaves an empty train or val split"
        )
    order = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = order[:n_val], order[n_val:]
    if train_subset is not None:
        train_idx = train_idx[:train_subset]
    return _take(train, train_idx), _take(train, val_idx)


def _take(split: ArraySplit, idx: np.ndarray) -> ArraySplit:
    return ArraySplit(images=split.images[idx], labels=split.labels[idx])
