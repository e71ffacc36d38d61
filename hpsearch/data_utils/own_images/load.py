"""Loading a folder or manifest of images: scan, split, then the cache, found from ``stat``
alone or built once."""

from __future__ import annotations

import os
import sys
from typing import IO

import hpsearch.data_utils.own_images.cache as cache_files
from hpsearch.data_utils.own_images.build import build_cache
from hpsearch.data_utils.own_images.dataset import ImageDataset, ImageOptions
from hpsearch.data_utils.own_images.plan import Plan

__all__ = ["load_images"]


def load_images(path: str | os.PathLike[str], options: ImageOptions | None = None, *,
                cache_dir: str | os.PathLike[str] | None = None, workers: int | None = None,
                progress: IO[str] | None = sys.stderr) -> ImageDataset:
    """Load a folder or manifest of images, decoding them into the cache on first use.

    An unchanged folder with the same settings finds its cache from ``stat`` alone (no image
    is opened); a changed file, label, split or setting builds a new cache. Concurrent
    calls for the same data (processes, machines sharing the cache folder) build it once.

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
    plan = Plan.make(path, options or ImageOptions(), cache_dir, workers, progress)
    with plan.pool:
        entry = cache_files.open_cache(plan.final, progress) if plan.probe else None
        if entry is None:
            with cache_files.build_lock(plan.root, plan.lock_key(), progress):
                plan.reload_probe()  # another process may have built it meanwhile
                entry = cache_files.open_cache(plan.final, progress) if plan.probe else None
                if entry is None:
                    entry = build_cache(plan)
    return plan.dataset(entry)
