"""Loading a folder or manifest of images: scan, split, then the cache, found from ``stat``
alone or built once."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import IO

import numpy as np

import hpsearch.data_utils.own_images.cache as cache_files
from hpsearch.data_utils.arrays import ArraySplit
from hpsearch.data_utils.own_images.build import build_cache
from hpsearch.data_utils.own_images.dataset import ImageDataset, ImageOptions
from hpsearch.data_utils.own_images.plan import Plan
from hpsearch.data_utils.own_images.records import SPLITS, ImageDataError
from hpsearch.data_utils.own_images.splits import LeakGroup, dedupe_rows

__all__ = ["load_cached_split", "load_images"]


def load_images(path: str | os.PathLike[str], options: ImageOptions | None = None, *,
                cache_dir: str | os.PathLike[str] | None = None, workers: int | None = None,
                progress: IO[str] | None = sys.stderr, build: bool = True) -> ImageDataset:
    """Load a folder or manifest of images, decoding them into the cache on first use.

    An unchanged folder with the same settings finds its cache from ``stat`` alone (no image
    is opened); a changed file, label, split or setting builds a new cache. A folder seen
    for the first time is decoded without a ``stat`` pass first (see :meth:`Plan.make`).
    Concurrent calls for the same data (processes, machines sharing the cache folder) build
    it once.

    Args:
        path: a folder (one sub-folder per class, optionally under train/ val/ test/) or a
            .csv / .jsonl manifest.
        options: image size, split fractions and seed, dedupe, manifest columns (default:
            ``ImageOptions()``).
        cache_dir: where caches live; default ``$XDG_CACHE_HOME/hpsearch/cache``.
        workers: processes decoding; default every usable core (small sets: this process).
        progress: stream for progress lines (a bar on a terminal); None for silence.
        build: decode into a new cache when none exists for this data and these settings;
            False: raise instead (nothing is decoded).

    Returns:
        The :class:`ImageDataset`.

    Raises:
        ImageDataError: the path cannot be used at all (missing, no images, one class, a
            manifest column missing, a class without any usable training image); the message
            names the path and the reason. With ``build`` False: no cache of this data and
            these settings exists.
    """
    plan = Plan.make(path, options or ImageOptions(), cache_dir, workers, progress,
                     defer_stats=build)
    if not build:
        entry = cache_files.open_cache(plan.final, progress) if plan.probe else None
        if entry is None:
            raise ImageDataError(f"{plan.source.path}: no decoded cache of its images with "
                                 f"these settings in {plan.root} (the files changed, or the "
                                 "cache was removed)")
        return plan.dataset(entry)
    with plan.pool:
        entry = cache_files.open_cache(plan.final, progress) if plan.probe else None
        if entry is None:
            with cache_files.build_lock(plan.root, plan.lock_key(), progress):
                plan.recheck()  # another process may have built it meanwhile
                entry = cache_files.open_cache(plan.final, progress) if plan.probe else None
                if entry is None:
                    entry = build_cache(plan)
    return plan.dataset(entry)


def load_cached_split(folder: str | os.PathLike[str], split: str = "test", *,
                      dedupe: bool = False) -> tuple[ArraySplit, tuple[str, ...]]:
    """One split of an existing cache folder, as :func:`load_images` gave it, without looking
    at the images' folder or decoding anything (``hpsearch register``: the test split a
    study was created with, even after the folder changed).

    Args:
        folder: a cache folder (:attr:`ImageDataset.cache_dir`).
        split: ``train``, ``val`` or ``test``.
        dedupe: drop the copies of images that are also in an earlier split, as the
            dedupe setting the cache was loaded with.

    Returns:
        The split (a read-only memory map; an in-memory copy where dedupe dropped rows) and
        its files, in row order.

    Raises:
        ImageDataError: no complete cache in ``folder``.
    """
    entry = cache_files.open_cache(Path(folder))
    if entry is None:
        raise ImageDataError(f"{folder}: no complete cache of decoded images there")
    rows = entry.meta["rows"]
    start = sum(rows[name] for name in SPLITS[:SPLITS.index(split)])
    stop = start + rows[split]
    images, labels = entry.images[start:stop], entry.labels[start:stop]
    names = list(entry.meta["files"][split])
    if dedupe:
        groups = [LeakGroup(g["kind"], tuple(tuple(f) for f in g["files"]))
                  for g in entry.meta["leakage"]]
        dropped = dedupe_rows(groups)
        keep = np.array([(split, name) not in dropped for name in names], dtype=bool)
        if not keep.all():
            images, labels = np.asarray(images)[keep], labels[keep]
            names = [name for name, kept in zip(names, keep) if kept]
    return ArraySplit(images, labels), tuple(names)
