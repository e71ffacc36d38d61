"""The two passes over the files: the header probe (remembered per manifest digest) and the
decoding into a new cache. Worker functions are module-level so spawned processes can run
them."""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

import hpsearch.data_utils.own_images.cache as cache_files
from hpsearch.data_utils.own_images.headers import file_digest, probe_file
from hpsearch.data_utils.own_images.preprocess import (
    PREPROCESS_VERSION,
    ImageFileError,
    _os_error_reason,
    decode_image,
)
from hpsearch.data_utils.own_images.records import SPLITS, Source
from hpsearch.data_utils.own_images.splits import find_leakage
from hpsearch.data_utils.own_images.workers import Progress, WorkerPool, chunked

__all__ = ["Probe", "build_cache", "probe_source"]

PROBE_VERSION = 1


@dataclass(frozen=True)
class Probe:
    """The header of every file of a :class:`Source` (parallel lists, same order).

    Attributes:
        widths, heights: pixels as stored (0 where the file was skipped).
        modes: Pillow modes ("" where skipped).
        grey: whether each image is grey.
        reasons: why a file is skipped, or None.
        digests: hex digest of the bytes of files whose size another file shares, else None.
    """

    widths: list[int]
    heights: list[int]
    modes: list[str]
    grey: list[bool]
    reasons: list[str | None]
    digests: list[str | None]


def probe_path(root: Path, source: Source, max_pixels: int) -> Path:
    return root / "probes" / f"{source.digest[:32]}-{max_pixels}-v{PROBE_VERSION}.json"


def probe_source(source: Source, *, root: Path, max_pixels: int, pool: WorkerPool,
                 stream: IO[str] | None) -> Probe:
    """Every file's header, from the remembered probe of this manifest digest or read now
    (then remembered)."""
    path = probe_path(root, source, max_pixels)
    try:
        probe = Probe(**json.loads(path.read_text()))
        if len(probe.widths) == len(source):
            return probe
    except (OSError, ValueError, TypeError):
        pass
    # Byte-identical files have the same size: only files that share a size are hashed.
    shared = {size for size, n in Counter(source.sizes).items() if n > 1}
    items = [(i, file, size, size in shared, max_pixels)
             for i, (file, size) in enumerate(zip(source.files, source.sizes))]
    columns: list[Any] = [[0] * len(items), [0] * len(items), [""] * len(items),
                          [False] * len(items), [None] * len(items), [None] * len(items)]
    progress = Progress("reading image headers", len(items), stream)
    for results in pool.map_chunks(probe_chunk, chunked(items, pool.workers, most=1024),
                                   size=len(items), progress=progress):
        for i, *values in results:
            for column, value in zip(columns, values):
                column[i] = value
    progress.close()
    columns[5] = [d.hex() if d is not None else None for d in columns[5]]
    probe = Probe(*columns)
    path.parent.mkdir(parents=True, exist_ok=True)
    cache_files.write_json_atomic(path, probe.__dict__)
    return probe


def probe_chunk(items: list[tuple[int, str, int, bool, int]]) -> list[tuple]:
    return [(i, *probe_file(file, size, want, max_pixels))
            for i, file, size, want, max_pixels in items]


@dataclass(frozen=True)
class Plan:
    """What to decode, in cache row order (train, then val, then test).

    Attributes:
        files: absolute paths. names: as shown. labels: class indices. splits: split codes.
    """

    files: list[str]
    names: list[str]
    labels: np.ndarray
    splits: np.ndarray


def build_cache(plan: Plan, *, root: Path, final: Path, key: str, image_size: int,
                channels: int, max_pixels: int, meta: dict[str, Any], pool: WorkerPool,
                stream: IO[str] | None) -> cache_files.CacheEntry:
    """Decode ``plan`` into the cache folder ``final`` (or open it, if another process built
    it meanwhile). ``meta`` is completed and written as ``meta.json``.

    Raises:
        ImageDataError: no file of the plan could be decoded (from the caller's check).
    """
    with cache_files.build_lock(root, key, stream):
        entry = cache_files.open_cache(final, stream)
        if entry is not None:
            return entry
        temp = cache_files.temp_folder(root, key)
        try:
            meta = _decode_into(temp, plan, image_size=image_size, channels=channels,
                                max_pixels=max_pixels, meta=meta, pool=pool, stream=stream)
            cache_files.finish(temp, final, meta)
        except BaseException:
            import shutil

            shutil.rmtree(temp, ignore_errors=True)
            raise
    entry = cache_files.open_cache(final, stream)
    assert entry is not None, final
    return entry


def _decode_into(temp: Path, plan: Plan, *, image_size: int, channels: int, max_pixels: int,
                 meta: dict[str, Any], pool: WorkerPool, stream: IO[str] | None) -> dict:
    n = len(plan.files)
    shape = (n, channels, image_size, image_size)
    target = temp / "images.npy"
    cache_files.create_images_file(target, shape)
    started = time.perf_counter()
    tasks = [(str(target), shape, max_pixels, chunk)
             for chunk in chunked(list(enumerate(plan.files)), pool.workers)]
    reasons: list[str | None] = [None] * n
    file_digests: list[bytes | None] = [None] * n
    pixel_digests: list[bytes | None] = [None] * n
    sums = np.zeros((n, 2, channels), dtype=np.int64)
    progress = Progress("decoding images", n, stream)
    for results in pool.map_chunks(decode_chunk, tasks, size=n, progress=progress):
        for row, reason, fdig, pdig, row_sums in results:
            reasons[row], file_digests[row], pixel_digests[row] = reason, fdig, pdig
            if row_sums is not None:
                sums[row] = row_sums
    pool.close()  # the workers' memory maps end before the file is cut
    _MAPS.clear()
    keep = np.array([r is None for r in reasons], dtype=bool)
    progress.close(f"{n - int(keep.sum())} skipped" if not keep.all() else "")
    cache_files.drop_rows(target, shape, keep)
    np.save(temp / "labels.npy", plan.labels[keep].astype(np.int64))
    splits = plan.splits[keep]
    names = [name for name, k in zip(plan.names, keep) if k]
    train_sums = sums[keep][splits == 0].sum(axis=0).astype(np.float64)
    pixels = max(1, int((splits == 0).sum()) * image_size * image_size)
    mean = train_sums[0] / pixels
    std = np.sqrt(np.maximum(train_sums[1] / pixels - mean**2, 0.0))
    leakage = find_leakage(splits, names, [d for d, k in zip(file_digests, keep) if k],
                           [d for d, k in zip(pixel_digests, keep) if k])
    return meta | {
        "format": cache_files.CACHE_FORMAT, "preprocess_version": PREPROCESS_VERSION,
        "image_size": image_size, "channels": channels,
        "rows": {name: int((splits == code).sum()) for code, name in enumerate(SPLITS)},
        "files": {name: [f for f, s in zip(names, splits) if s == code]
                  for code, name in enumerate(SPLITS)},
        "decode_skipped": [[name, reason] for name, reason in zip(plan.names, reasons)
                           if reason is not None],
        "leakage": [{"kind": g.kind, "files": [list(f) for f in g.files]} for g in leakage],
        "mean": (mean / 255).round(6).tolist(), "std": (std / 255).round(6).tolist(),
        "built": {"seconds": round(time.perf_counter() - started, 2), "host":
                  socket.gethostname(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    }


_MAPS: dict[str, np.memmap] = {}  # a worker's writable map of the cache being built


def decode_chunk(task: tuple[str, tuple[int, int, int, int], int, list[tuple[int, str]]]
                 ) -> list[tuple]:
    """Decode files into rows of the cache being built; per file (row, reason or None,
    file digest, pixel digest, per-channel [sum, sum of squares] of the pixels)."""
    target, shape, max_pixels, items = task
    images = _MAPS.get(target)
    if images is None:
        images = _MAPS[target] = cache_files.images_map(Path(target), shape)
    channels, image_size = shape[1], shape[2]
    results = []
    for row, file in items:
        try:
            with open(file, "rb") as f:
                data = f.read()
            fdig = file_digest(data)
        except OSError as exc:
            results.append((row, _os_error_reason(exc), None, None, None))
            continue
        try:
            pixels, _ = decode_image(data, image_size=image_size, channels=channels,
                                     max_pixels=max_pixels)
        except ImageFileError as exc:
            results.append((row, exc.reason, fdig, None, None))
            continue
        images[row] = pixels
        flat = pixels.reshape(channels, -1).astype(np.int64)
        results.append((row, None, fdig, file_digest(pixels.tobytes()),
                        [flat.sum(axis=1).tolist(), np.einsum("ij,ij->i", flat, flat).tolist()]))
    return results
