"""What loading a folder or manifest of images takes (:class:`ImageOptions`) and gives
(:class:`ImageDataset`, memory-mapped uint8 splits)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hpsearch.data_utils.arrays import ArraySplit
from hpsearch.data_utils.own_images.preprocess import MAX_IMAGE_PIXELS
from hpsearch.data_utils.own_images.records import SPLITS, SkippedFile
from hpsearch.data_utils.own_images.splits import Leakage, imbalance_ratio

__all__ = ["ImageDataset", "ImageOptions", "default_image_size"]

IMAGE_SIZE_RANGE = (16, 224)  # the default image size is clipped to this range
EXPLICIT_SIZE_RANGE = (8, 1024)


@dataclass(frozen=True)
class ImageOptions:
    """The settings of an own-images data set (their names are the proposed spec keys and,
    with dashes, the command-line options).

    Attributes:
        image_size: side S of the square images, pixels, 8..1024; None: the median shorter
            side of the images, clipped to 16..224 and rounded down to a multiple of 8.
        val_fraction: share of the training files carved out for validation where no
            validation split is given, in (0, 1).
        test_fraction: the same for the test split, in [0, 1).
        seed: seed of the carving.
        dedupe: drop images that are also in an earlier split from val and test.
        path_column, label_column, split_column: a manifest's column names.
        max_pixels: images declaring more pixels are skipped as decompression bombs.

    Raises:
        ValueError: a value out of range; the message names the setting.
    """

    image_size: int | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    dedupe: bool = False
    path_column: str = "path"
    label_column: str = "label"
    split_column: str = "split"
    max_pixels: int = MAX_IMAGE_PIXELS

    def __post_init__(self) -> None:
        low, high = EXPLICIT_SIZE_RANGE
        if self.image_size is not None and not low <= self.image_size <= high:
            raise ValueError(f"image_size must be in {low}..{high}, got {self.image_size}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must be below 1, got "
                             f"{self.val_fraction} + {self.test_fraction}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {self.max_pixels}")


@dataclass(frozen=True)
class ImageDataset:
    """A folder or manifest of images, decoded and split.

    Attributes:
        source: the folder or manifest, absolute.
        kind: ``"folder"`` or ``"manifest"``.
        class_names: sorted class names; label i is ``class_names[i]``.
        channels: C, 1 when every image is grey, else 3.
        image_size: S.
        train, val, test: uint8 images (N, C, S, S) and int64 labels (N,); read-only memory
            maps of the cache (val and test are in-memory copies when ``dedupe`` dropped
            some). ``test`` may hold no image (test_fraction 0).
        mean, std: per-channel mean and standard deviation of the training images, 0-1 scale.
        manifest_digest: digest of the files' paths, sizes, times, labels and given splits.
        split_digest: digest of the split assignment (with the manifest digest, it names
            the exact files of each split).
        cache_dir: the cache folder these arrays map.
        files: split name -> the files of that split (as shown), in row order.
        skipped: every file left out, with the reason.
        leakage: images in more than one split (and what dedupe dropped).
        counts: split name -> images per class.
        split_origin: split name -> ``"folders"``, ``"column"`` or ``"carved"``.
    """

    source: Path
    kind: str
    class_names: tuple[str, ...]
    channels: int
    image_size: int
    train: ArraySplit = field(repr=False)
    val: ArraySplit = field(repr=False)
    test: ArraySplit = field(repr=False)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    manifest_digest: str
    split_digest: str
    cache_dir: Path
    files: Mapping[str, tuple[str, ...]] = field(repr=False)
    skipped: tuple[SkippedFile, ...] = field(repr=False)
    leakage: Leakage = field(repr=False)
    counts: Mapping[str, tuple[int, ...]] = field(repr=False)
    split_origin: Mapping[str, str] = field(repr=False)

    @property
    def name(self) -> str:
        """The folder's base name or the manifest's stem (a default study name)."""
        return self.source.stem if self.kind == "manifest" else self.source.name

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def imbalance_ratio(self) -> float:
        """Largest over smallest training class (1.0 balanced)."""
        return imbalance_ratio(self.counts["train"])

    def file_table(self) -> list[tuple[str, str, str]]:
        """(split, path, class name) of every image used, in row order: the list a study
        logs so that a resumed study can check it evaluates the same files."""
        rows = []
        for name in SPLITS:
            split = getattr(self, name)
            rows += [(name, path, self.class_names[label])
                     for path, label in zip(self.files[name], split.labels.tolist())]
        return rows


def default_image_size(shorter_sides: np.ndarray) -> int:
    """The median shorter side, clipped to 16..224 and rounded down to a multiple of 8
    (down, so that the typical image is never enlarged)."""
    low, high = IMAGE_SIZE_RANGE
    median = float(np.median(shorter_sides)) if len(shorter_sides) else low
    return int(np.clip(median, low, high) // 8 * 8)
