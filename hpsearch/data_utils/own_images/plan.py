"""What is decided before decoding: the files, their splits, the settings and the cache's
name; and the :class:`ImageDataset` assembled from a cache."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

import hpsearch.data_utils.own_images.cache as cache_files
from hpsearch.data_utils.arrays import ArraySplit
from hpsearch.data_utils.own_images.dataset import ImageDataset, ImageOptions, default_image_size
from hpsearch.data_utils.own_images.passes import Probe, load_probe, probe_source
from hpsearch.data_utils.own_images.preprocess import PREPROCESS_VERSION
from hpsearch.data_utils.own_images.records import SPLITS, ImageDataError, SkippedFile, Source
from hpsearch.data_utils.own_images.sources import (
    dataset_display_name,
    scan_source,
    with_stats,
)
from hpsearch.data_utils.own_images.splits import (
    Leakage,
    LeakGroup,
    assign_splits,
    class_counts,
    dedupe_rows,
    split_digest,
)
from hpsearch.data_utils.own_images.workers import WorkerPool

__all__ = ["Plan", "settings_of"]


def settings_of(probe: Probe, usable: np.ndarray, options: ImageOptions) -> tuple[int, int]:
    """(image size, channels) from the headers of the ``usable`` files: the given size or the
    default; 1 channel when every usable image is grey, else 3."""
    sides = np.minimum(probe.widths, probe.heights)[usable]
    image_size = options.image_size or default_image_size(sides)
    return image_size, 1 if bool(probe.grey[usable].all()) else 3


@dataclass
class Plan:
    """One load's decisions. ``probe`` is None until the headers are known (remembered, read
    by a header probe, or recorded by a first build); then :meth:`resolve` fixes the image
    size, channels, cache key and folder."""

    source: Source
    options: ImageOptions
    splits: np.ndarray
    root: Path
    pool: WorkerPool
    stream: IO[str] | None
    probe: Probe | None = None
    image_size: int = 0
    channels: int = 0
    key: str = ""
    final: Path = Path()

    @classmethod
    def make(cls, path: str | os.PathLike[str], options: ImageOptions,
             cache_dir: str | os.PathLike[str] | None, workers: int | None,
             progress: IO[str] | None, *, read_headers: bool = False,
             defer_stats: bool = False) -> Plan:
        """Scan and split; the headers too when ``read_headers`` (else only if remembered).

        With ``defer_stats``, a folder never seen before (no listing remembered, no cache
        named for it) is left without its files' sizes and times: no cache can exist for
        it, and a first build takes them with ``fstat`` while reading the files, instead of
        a ``stat`` per file before decoding starts (a fifth of the build for small PNGs).

        Raises:
            ImageDataError: the path cannot be used at all.
        """
        source = scan_source(path, path_column=options.path_column,
                             label_column=options.label_column,
                             split_column=options.split_column or None, stat_files=False)
        root = Path(cache_dir).expanduser() if cache_dir else cache_files.default_cache_dir()
        if not (defer_stats and source.kind == "folder"
                and not cache_files.listing_known(root, source.listing, _folder_name(source))):
            source = with_stats(source)
        splits = assign_splits(np.asarray(source.labels, dtype=np.int64),
                               np.asarray(source.splits, dtype=np.int64),
                               num_classes=len(source.class_names),
                               val_fraction=options.val_fraction,
                               test_fraction=options.test_fraction, seed=options.seed)
        plan = cls(source, options, splits, root, WorkerPool(workers), progress)
        if read_headers:
            with plan.pool:
                plan.resolve(probe_source(source, root=root, max_pixels=options.max_pixels,
                                          pool=plan.pool, stream=progress))
        else:
            plan.reload_probe()
        return plan

    @property
    def stats_deferred(self) -> bool:
        """The files' sizes and times (so the manifest digest, the cache key) are not known
        yet; see :meth:`make`."""
        return not self.source.digest

    def take_stats(self, stats: np.ndarray | None = None) -> None:
        """Set the files' sizes and times (int64 (N, 2), in the source's order; None: a
        ``stat`` per file now), and so the manifest digest."""
        self.source = with_stats(self.source, stats)

    def recheck(self) -> None:
        """Under the build lock: take what another process may have done meanwhile (a cache
        built, a probe remembered)."""
        if self.stats_deferred and cache_files.listing_known(
                self.root, self.source.listing, _folder_name(self.source)):
            self.take_stats()
        self.reload_probe()

    def reload_probe(self) -> None:
        """Take the remembered probe, if there is one now."""
        if self.probe is None and not self.stats_deferred:
            probe = load_probe(self.root, self.source, self.options.max_pixels)
            if probe is not None:
                self.resolve(probe)

    def resolve(self, probe: Probe) -> None:
        """Fix the settings from every file's header.

        Raises:
            ImageDataError: no header is readable, or a class has no readable training file.
        """
        usable = probe.usable
        labels = np.asarray(self.source.labels, dtype=np.int64)
        check_classes(self.source, labels[usable], self.splits[usable], "readable")
        self.probe = probe
        self.image_size, self.channels = settings_of(probe, usable, self.options)
        self.key = cache_files.cache_key(self.settings())
        self.final = self.root / f"{_folder_name(self.source)}-{self.image_size}px-{self.key[:16]}"

    def settings(self) -> dict[str, Any]:
        """What the cache's content depends on (hashed into its key)."""
        return {"format": cache_files.CACHE_FORMAT, "preprocess": PREPROCESS_VERSION,
                "manifest": self.source.digest, "splits": split_digest(self.splits),
                "image_size": self.image_size, "channels": self.channels,
                "max_pixels": self.options.max_pixels}

    def lock_key(self) -> str:
        """The builders of one cache share this, before they know its settings (or the
        files' sizes and times)."""
        return cache_files.cache_key({"listing": self.source.listing,
                                      "splits": split_digest(self.splits),
                                      "image_size": self.options.image_size,
                                      "max_pixels": self.options.max_pixels})

    def origin(self) -> dict[str, str]:
        given, kind = set(self.source.splits), self.source.split_origin
        return {"train": kind or "all files", "val": kind if 1 in given else "carved",
                "test": kind if 2 in given else "carved"}

    def dataset(self, entry: cache_files.CacheEntry) -> ImageDataset:
        """The :class:`ImageDataset` of an opened cache (dedupe applied here)."""
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
        check_classes(self.source, entry.labels, np.repeat(
            np.arange(3), [meta["rows"][n] for n in SPLITS]), "decodable")
        return ImageDataset(
            source=self.source.path, kind=self.source.kind,
            class_names=self.source.class_names, channels=self.channels,
            image_size=self.image_size, train=arrays["train"], val=arrays["val"],
            test=arrays["test"], mean=tuple(meta["mean"]), std=tuple(meta["std"]),
            manifest_digest=self.source.digest, split_digest=split_digest(self.splits),
            cache_dir=entry.folder, files=files,
            skipped=(*self.source.skipped, *(SkippedFile(p, r) for p, r in meta["skipped"])),
            leakage=Leakage(groups, tuple(sorted(dropped))),
            counts={name: class_counts(arrays[name].labels, len(self.source.class_names))
                    for name in SPLITS},
            split_origin=self.origin())


def check_classes(source: Source, labels: np.ndarray, splits: np.ndarray, what: str) -> None:
    """Every class needs a usable training image.

    Raises:
        ImageDataError: no image is usable, or naming the classes without a training one.
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
