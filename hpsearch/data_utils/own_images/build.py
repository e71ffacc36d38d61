"""Building a cache: decode every file into a temp folder (guessing the settings from a
sample when no header was read yet, see :mod:`.passes`), drop the rows that failed, compute
the training split's mean and std and the leakage, and rename the folder into place."""

from __future__ import annotations

import operator
import shutil
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import hpsearch.data_utils.own_images.cache as cache_files
from hpsearch.data_utils.own_images.headers import file_digest, read_file
from hpsearch.data_utils.own_images.passes import (
    Decoded,
    Probe,
    decode_files,
    sample_headers,
    save_probe,
)
from hpsearch.data_utils.own_images.plan import Plan, check_classes, settings_of
from hpsearch.data_utils.own_images.preprocess import PREPROCESS_VERSION
from hpsearch.data_utils.own_images.records import SPLITS
from hpsearch.data_utils.own_images.splits import LeakGroup, find_leakage, split_digest
from hpsearch.errors import DiskFull, is_disk_full

__all__ = ["build_cache"]


def build_cache(plan: Plan) -> cache_files.CacheEntry:
    """Decode ``plan``'s files into its cache folder (the caller holds the build lock).

    Raises:
        ImageDataError: no file, or no training file of some class, could be used.
        DiskFull: no space left for the cache; names the cache folder and its free space
            (nothing of the build is left there).
    """
    rows = np.argsort(plan.splits, kind="stable")  # train, val, test; file order in each
    files = _pick(plan.source.files, rows)
    n_train = int((plan.splits == 0).sum())
    temp = cache_files.temp_folder(plan.root, plan.lock_key())
    started = time.perf_counter()
    try:
        target = temp / "images.npy"
        recorded = plan.probe is None  # the headers are recorded on the way, then remembered
        if recorded:
            decoded = _decode_guessing(plan, rows, files, target, n_train)
        else:
            decoded = decode_files(files, target, n_train=n_train, image_size=plan.image_size,
                                   channels=plan.channels, max_pixels=plan.options.max_pixels,
                                   pool=plan.pool, stream=plan.stream, record_headers=False)
        plan.pool.close(wait=False)  # every row is written; the workers exit meanwhile
        meta, file_digests, flushed = _finish(plan, rows, files, decoded, temp)
        meta["built"] = {"seconds": round(time.perf_counter() - started, 2),
                         "host": socket.gethostname(),
                         "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        first = not (plan.final / "meta.json").exists()  # else another builder's won
        cache_files.finish(temp, plan.final, meta, images_flushed=flushed)
    except BaseException as exc:
        shutil.rmtree(temp, ignore_errors=True)
        if isinstance(exc, Exception) and not isinstance(exc, DiskFull) and is_disk_full(exc):
            raise _disk_full(plan.root) from exc  # a worker's ENOSPC names no file
        raise
    if recorded:
        _remember_probe(plan, rows, file_digests)
    entry = cache_files.open_cache(plan.final, plan.stream, meta=meta if first else None)
    assert entry is not None, plan.final
    return entry


def _remember_probe(plan: Plan, rows: np.ndarray, file_digests: dict[int, bytes]) -> None:
    """Remember the headers a first build recorded, with the digests its leakage check took
    (rows ``rows``): every file with a byte-identical twin has one, as a header probe's."""
    probe = plan.probe
    assert probe is not None
    for row, digest in file_digests.items():
        probe.digests[rows[row]] = np.frombuffer(digest, np.uint8)
        probe.has_digest[rows[row]] = True
    save_probe(plan.root, plan.source, plan.options.max_pixels, probe)


def _disk_full(root: Path) -> DiskFull:
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        free = None
    return DiskFull(str(root), free)


def _decode_guessing(plan: Plan, rows: np.ndarray, files: list[str], target: Path,
                     n_train: int) -> Decoded:
    """Decode with settings guessed from a sample of headers; decode again if every file's
    header, recorded on the way, says otherwise. Resolves ``plan`` (its probe: the recorded
    headers; the files' sizes and times too, where it had none)."""
    options = plan.options
    sample = sample_headers(plan.source, options.max_pixels)
    guess_probe = Probe.empty(len(sample))
    for i, header in enumerate(sample):
        guess_probe.set(i, header, None, None)
    guess = settings_of(guess_probe, np.ones(len(sample), bool), options) if sample else (
        options.image_size or 32, 3)
    decoded = decode_files(files, target, n_train=n_train, image_size=guess[0],
                           channels=guess[1],
                           max_pixels=options.max_pixels, pool=plan.pool, stream=plan.stream,
                           record_headers=True, take_stats=plan.stats_deferred)
    assert decoded.probe is not None
    if decoded.stats is not None:  # in the source's order: row r is file rows[r]
        stats = np.empty_like(decoded.stats)
        stats[rows] = decoded.stats
        plan.take_stats(stats)
    plan.resolve(_in_source_order(decoded.probe, rows))
    if (plan.image_size, plan.channels) != guess:
        if plan.stream is not None:
            print(f"the sample suggested {guess[0]} px, {guess[1]} channel(s); all headers say "
                  f"{plan.image_size} px, {plan.channels}: decoding again", file=plan.stream,
                  flush=True)
        decoded = decode_files(files, target, n_train=n_train, image_size=plan.image_size,
                               channels=plan.channels, max_pixels=options.max_pixels,
                               pool=plan.pool, stream=plan.stream, record_headers=False)
    return decoded


def _in_source_order(probe: Probe, rows: np.ndarray) -> Probe:
    """A probe recorded in row order, as the source lists the files (row r is file rows[r])."""
    ordered = Probe.empty(len(rows))
    for name in ("widths", "heights", "modes", "grey", "digests", "has_digest"):
        getattr(ordered, name)[rows] = getattr(probe, name)
    ordered.reasons.update({int(rows[r]): reason for r, reason in probe.reasons.items()})
    return ordered


def _finish(plan: Plan, rows: np.ndarray, files: list[str], decoded: Decoded, temp: Path
            ) -> tuple[dict[str, Any], dict[int, bytes], Callable[[], None]]:
    """Cut the failed rows, start flushing the images to disk, write the labels; the
    metadata (mean, std, leakage, files), the file digests the leakage check took (see
    :func:`_leakage`), and the wait for the flush."""
    size, channels = plan.image_size, plan.channels
    keep = decoded.decoded
    cache_files.drop_rows(temp / "images.npy", (len(rows), channels, size, size), keep)
    flushed = decoded.writeback.final()
    labels = np.asarray(plan.source.labels, dtype=np.int64)[rows][keep]
    np.save(temp / "labels.npy", labels)
    splits = plan.splits[rows][keep]
    names = _pick(plan.source.names, rows[keep])
    if not len(labels):
        check_classes(plan.source, labels, splits, "decodable")
    train_sums = decoded.sums.astype(np.float64)
    pixels = max(1, int((splits == 0).sum()) * size * size)
    mean = train_sums[0] / pixels
    std = np.sqrt(np.maximum(train_sums[1] / pixels - mean**2, 0.0))
    leakage, file_digests = _leakage(decoded, keep, splits, names, files, temp / "images.npy")
    counts = np.bincount(splits, minlength=len(SPLITS))
    ends = np.cumsum(counts)
    return {
        "format": cache_files.CACHE_FORMAT, "preprocess_version": PREPROCESS_VERSION,
        "key": plan.key, "source": str(plan.source.path), "kind": plan.source.kind,
        "manifest_digest": plan.source.digest, "split_digest": split_digest(plan.splits),
        "settings": plan.settings() | {"val_fraction": plan.options.val_fraction,
                                       "test_fraction": plan.options.test_fraction,
                                       "seed": plan.options.seed},
        "class_names": list(plan.source.class_names),
        "image_size": size, "channels": channels,
        "rows": dict(zip(SPLITS, counts.tolist())),
        "files": {name: names[start:stop]  # the rows are in split order
                  for name, start, stop in zip(SPLITS, ends - counts, ends)},
        "skipped": [[plan.source.names[r], reason] for r, reason in
                    sorted((int(rows[row]), reason) for row, reason in decoded.reasons.items())],
        "leakage": [{"kind": g.kind, "files": [list(f) for f in g.files]} for g in leakage],
        "mean": (mean / 255).round(6).tolist(), "std": (std / 255).round(6).tolist(),
    }, file_digests, flushed


def _pick(items: Sequence[str], rows: np.ndarray) -> list[str]:
    """``[items[r] for r in rows]``, at C speed (a build does it for every file)."""
    if len(rows) < 2:
        return [items[r] for r in rows.tolist()]
    return list(operator.itemgetter(*rows.tolist())(items))


def _leakage(decoded: Decoded, keep: np.ndarray, splits: np.ndarray, names: list[str],
             files: list[str], images: Path) -> tuple[tuple[LeakGroup, ...], dict[int, bytes]]:
    """:func:`find_leakage` of the decoded rows (``keep``), exactly, from their fingerprints:
    only rows whose fingerprint another row shares can leak, and only these are hashed, their
    pixels (read back from ``images``, the cut file) and their files' bytes (read again).

    Returns:
        The groups, and the file digest of each hashed row (by its index among all rows):
        with the undecodable files' ones, every file with a byte-identical twin has one.
    """
    kept = np.flatnonzero(keep)
    _, inverse, counts = np.unique(decoded.fingerprints[kept], return_inverse=True,
                                   return_counts=True)
    shared = np.flatnonzero(counts[inverse.ravel()] > 1)
    if not len(shared):
        return (), {}
    pixels = np.load(images, mmap_mode="r")
    pixel_digests = [file_digest(np.ascontiguousarray(pixels[i])) for i in shared.tolist()]
    file_digests: dict[int, bytes] = {}
    for i in kept[shared].tolist():
        try:
            file_digests[i] = file_digest(read_file(files[i]))
        except OSError:  # removed since: its pixels still count
            continue
    groups = find_leakage(splits[shared], [names[i] for i in shared.tolist()],
                          [file_digests.get(i) for i in kept[shared].tolist()], pixel_digests)
    return groups, file_digests
