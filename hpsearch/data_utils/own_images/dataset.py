"""Loading a folder or manifest of images: scan, split, probe, then the cache (found, or
built once), as an :class:`ImageDataset` of memory-mapped uint8 splits."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

import hpsearch.data_utils.own_images.cache as cache_files
from hpsearch.data_utils.arrays import ArraySplit
from hpsearch.data_utils.own_images.build import Plan, Probe, build_cache, probe_source
from hpsearch.data_utils.own_images.preprocess import MAX_IMAGE_PIXELS, PREPROCESS_VERSION
from hpsearch.data_utils.own_images.sources import (
    SPLITS,
    ImageDataError,
    SkippedFile,
    Source,
    dataset_display_name,
    scan_source,
)
from hpsearch.data_utils.own_images.splits import (
    Leakage,
    LeakGroup,
    assign_splits,
    class_counts,
    dedupe_rows,
    imbalance_ratio,
    split_digest,
)
from hpsearch.data_utils.own_images.workers import WorkerPool

__all__ = ["ImageDataset", "ImageOptions", "default_image_size", "load_images"]

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


def load_images(path: str | os.PathLike[str], options: ImageOptions | None = None, *,
                cache_dir: str | os.PathLike[str] | None = None, workers: int | None = None,
                progress: IO[str] | None = sys.stderr) -> ImageDataset:
    """Load a folder or manifest of images, decoding them into the cache on first use.

    An unchanged folder with the same settings finds its cache from ``stat`` alone (no file
    is opened); a changed file, label, split or setting builds a new cache.

    Args:
        path: a folder (one sub-folder per class, optionally under train/ val/ test/) or a
            .csv / .jsonl manifest.
        options: image size, split fractions and seed, dedupe, manifest columns (default:
            ``ImageOptions()``).
        cache_dir: where caches live; default ``$XDG_CACHE_HOME/hpsearch/cache``.
        workers: processes decoding; default every usable core (small sets: this process).
        progress: stream for progress lines (a bar on a terminal); None for silence.

    Returns:
        The :class:`ImageDataset`.

    Raises:
        ImageDataError: the path cannot be used at all (missing, no images, one class, a
            manifest column missing, a class without any usable training image); the message
            names the path and the reason.
    """
    options = options or ImageOptions()
    plan = _Plan.make(path, options, cache_dir, workers, progress)
    with plan.pool:
        entry = cache_files.open_cache(plan.final, progress)
        if entry is None:
            entry = build_cache(
                plan.decode_plan(), root=plan.root, final=plan.final, key=plan.key,
                image_size=plan.image_size, channels=plan.channels,
                max_pixels=options.max_pixels, meta=plan.meta(), pool=plan.pool,
                stream=progress)
    return plan.dataset(entry)


@dataclass
class _Plan:
    """Everything decided before decoding: source, splits, probe, settings, cache key."""

    source: Source
    options: ImageOptions
    splits: np.ndarray
    probe: Probe
    root: Path
    pool: WorkerPool
    image_size: int
    channels: int
    key: str = ""
    final: Path = Path()

    @classmethod
    def make(cls, path: str | os.PathLike[str], options: ImageOptions,
             cache_dir: str | os.PathLike[str] | None, workers: int | None,
             progress: IO[str] | None) -> _Plan:
        source = scan_source(path, path_column=options.path_column,
                             label_column=options.label_column,
                             split_column=options.split_column or None)
        labels = np.asarray(source.labels, dtype=np.int64)
        splits = assign_splits(labels, np.asarray(source.splits, dtype=np.int64),
                               num_classes=len(source.class_names),
                               val_fraction=options.val_fraction,
                               test_fraction=options.test_fraction, seed=options.seed)
        root = Path(cache_dir).expanduser() if cache_dir else cache_files.default_cache_dir()
        pool = WorkerPool(workers)
        try:
            probe = probe_source(source, root=root, max_pixels=options.max_pixels, pool=pool,
                                 stream=progress)
        except BaseException:
            pool.close()
            raise
        usable = np.array([r is None for r in probe.reasons], dtype=bool)
        _check_classes(source, labels[usable], splits[usable], "readable")
        sides = np.minimum(np.asarray(probe.widths), np.asarray(probe.heights))[usable]
        plan = cls(source, options, splits, probe, root, pool,
                   image_size=options.image_size or default_image_size(sides),
                   channels=1 if all(np.asarray(probe.grey)[usable]) else 3)
        plan.key = cache_files.cache_key(plan.settings())
        plan.final = root / f"{_folder_name(source)}-{plan.image_size}px-{plan.key[:16]}"
        return plan

    def settings(self) -> dict[str, Any]:
        """What the cache's content depends on (hashed into its key)."""
        return {"format": cache_files.CACHE_FORMAT, "preprocess": PREPROCESS_VERSION,
                "manifest": self.source.digest, "splits": split_digest(self.splits),
                "image_size": self.image_size, "channels": self.channels,
                "max_pixels": self.options.max_pixels}

    def usable(self) -> np.ndarray:
        return np.array([r is None for r in self.probe.reasons], dtype=bool)

    def decode_plan(self) -> Plan:
        rows = np.flatnonzero(self.usable())
        rows = rows[np.argsort(self.splits[rows], kind="stable")]
        return Plan(files=[self.source.files[r] for r in rows],
                    names=[self.source.names[r] for r in rows],
                    labels=np.asarray(self.source.labels, dtype=np.int64)[rows],
                    splits=self.splits[rows])

    def meta(self) -> dict[str, Any]:
        return {"key": self.key, "source": str(self.source.path), "kind": self.source.kind,
                "manifest_digest": self.source.digest, "split_digest": split_digest(self.splits),
                "settings": self.settings() | {"val_fraction": self.options.val_fraction,
                                               "test_fraction": self.options.test_fraction,
                                               "seed": self.options.seed},
                "class_names": list(self.source.class_names)}

    def origin(self) -> dict[str, str]:
        given, kind = set(self.source.splits), self.source.split_origin
        return {"train": kind or "all files", "val": kind if 1 in given else "carved",
                "test": kind if 2 in given else "carved"}

    def dataset(self, entry: cache_files.CacheEntry) -> ImageDataset:
        meta = entry.meta
        groups = tuple(LeakGroup(g["kind"], tuple(tuple(f) for f in g["files"]))
                       for g in meta["leakage"])
        dropped = dedupe_rows(groups) if self.options.dedupe else set()
        arrays, files, start = {}, {}, 0
        for name in SPLITS:
            stop = start + meta["rows"][name]
            names = meta["files"][name]
            images, labels = entry.images[start:stop], entry.labels[start:stop]
            if dropped:
                keep = np.array([(name, f) not in dropped for f in names], dtype=bool)
                if not keep.all():
                    images, labels = np.asarray(images)[keep], labels[keep]
                    names = [f for f, k in zip(names, keep) if k]
            arrays[name], files[name] = ArraySplit(images, labels), tuple(names)
            start = stop
        _check_classes(self.source, entry.labels, np.repeat(
            np.arange(3), [meta["rows"][n] for n in SPLITS]), "decodable")
        probe_skipped = [SkippedFile(self.source.names[i], reason)
                         for i, reason in enumerate(self.probe.reasons) if reason is not None]
        return ImageDataset(
            source=self.source.path, kind=self.source.kind,
            class_names=self.source.class_names, channels=self.channels,
            image_size=self.image_size, train=arrays["train"], val=arrays["val"],
            test=arrays["test"], mean=tuple(meta["mean"]), std=tuple(meta["std"]),
            manifest_digest=self.source.digest, split_digest=split_digest(self.splits),
            cache_dir=entry.folder, files=files,
            skipped=(*self.source.skipped, *probe_skipped,
                     *(SkippedFile(p, r) for p, r in meta["decode_skipped"])),
            leakage=Leakage(groups, tuple(sorted(dropped))),
            counts={name: class_counts(arrays[name].labels, len(self.source.class_names))
                    for name in SPLITS},
            split_origin=self.origin())


def _check_classes(source: Source, labels: np.ndarray, splits: np.ndarray, what: str) -> None:
    """Every class needs a usable training image.

    Raises:
        ImageDataError: naming the classes without one.
    """
    if not len(labels):
        raise ImageDataError(f"{source.path}: none of its {len(source)} image files is "
                             f"{what} (see the skipped files: hpsearch data inspect)")
    train = np.bincount(labels[splits == 0], minlength=len(source.class_names))
    empty = [source.class_names[i] for i in np.flatnonzero(train == 0)]
    if empty:
        raise ImageDataError(f"{source.path}: no {what} training image for class"
                             f"{'es' if len(empty) > 1 else ''} "
                             f"{', '.join(repr(c) for c in empty)}")


def _folder_name(source: Source) -> str:
    """The data set's name as a safe folder-name part."""
    name = dataset_display_name(source.path)
    return re.sub(r"[^\w.-]+", "_", name).strip("._")[:40] or "images"
