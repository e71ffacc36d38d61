"""The passes over the files: the header probe (for ``inspect``) and the decoding into a new
cache, which records every file's header on the way, so a first build reads each file once.

A first build must choose the channels (1 when every image is grey) and the default image
size (the median shorter side) before decoding, which would take a pass over every header:
for small images as much as a third of the decoding. Instead it guesses both from the
headers of a fixed sample of files, decodes everything with the guess while recording every
header, and checks the guess against all of them; only when it was wrong (a colour image
among grey ones, a median across a multiple of 8) does it decode again. What it records is
remembered (``probes/``) like a header probe's result, so later loads know the settings from
``stat`` alone. Worker functions are module-level so spawned processes can run them.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

import hpsearch.data_utils.own_images.cache as cache_files
from hpsearch.data_utils.own_images.headers import (
    file_digest,
    header_of,
    probe_file,
    read_file,
    read_file_stat,
    stat_of,
)
from hpsearch.data_utils.own_images.preprocess import (
    GROUP_PIXELS,
    ImageFileError,
    _os_error_reason,
    bomb_warnings_ignored,
    decode_unresized,
    resize_group,
    resize_square,
)
from hpsearch.data_utils.own_images.records import Source
from hpsearch.data_utils.own_images.rows import ChunkRows, channel_sums, pixel_fingerprints
from hpsearch.data_utils.own_images.workers import Progress, WorkerPool, chunked

__all__ = ["Probe", "decode_files", "load_probe", "probe_source", "save_probe"]

PROBE_VERSION = 3  # 3: file digests are SHA-256's (were BLAKE2b's)
SAMPLE = 256  # files whose headers decide a first build's guess
CHUNK_BYTES = 8 << 20  # decoded pixels per chunk, at most 1,024 files: few results to collect


@dataclass(frozen=True)
class Probe:
    """The header of every file of a :class:`Source` (arrays in the source's order).

    Attributes:
        widths, heights: int32 (N,), pixels as stored (0 where the header is unusable).
        modes: str array (N,), Pillow modes ("" where unusable).
        grey: bool (N,).
        reasons: index -> why the file's header is unusable (a skipped file).
        digests: uint8 (N, 16), :func:`file_digest` of the file's bytes where ``has_digest``.
        has_digest: bool (N,); a header probe hashes only files whose size another shares.
    """

    widths: np.ndarray
    heights: np.ndarray
    modes: np.ndarray
    grey: np.ndarray
    reasons: dict[int, str]
    digests: np.ndarray
    has_digest: np.ndarray

    @property
    def usable(self) -> np.ndarray:
        """bool (N,): the header could be read."""
        usable = np.ones(len(self.widths), dtype=bool)
        usable[list(self.reasons)] = False
        return usable

    @classmethod
    def empty(cls, n: int) -> Probe:
        return cls(np.zeros(n, np.int32), np.zeros(n, np.int32), np.zeros(n, "<U8"),
                   np.zeros(n, bool), {}, np.zeros((n, 16), np.uint8), np.zeros(n, bool))

    def set(self, i: int, header: Any, reason: str | None, digest: bytes | None) -> None:
        if reason is not None:
            self.reasons[i] = reason
        else:
            self.widths[i], self.heights[i] = header.width, header.height
            self.modes[i], self.grey[i] = header.mode, header.grey
        if digest is not None:
            self.digests[i] = np.frombuffer(digest, np.uint8)
            self.has_digest[i] = True


def probe_path(root: Path, source: Source, max_pixels: int) -> Path:
    return root / "probes" / f"{source.digest[:32]}-{max_pixels}-v{PROBE_VERSION}.npz"


def load_probe(root: Path, source: Source, max_pixels: int) -> Probe | None:
    """The remembered probe of this manifest digest, or None."""
    try:
        with np.load(probe_path(root, source, max_pixels), allow_pickle=False) as saved:
            arrays = {key: saved[key] for key in saved.files}
    except (OSError, ValueError, KeyError):
        return None
    if len(arrays.get("widths", ())) != len(source):
        return None
    reasons = dict(zip(arrays.pop("reason_rows").tolist(), arrays.pop("reason_texts").tolist()))
    return Probe(reasons=reasons, **arrays)


def save_probe(root: Path, source: Source, max_pixels: int, probe: Probe) -> None:
    """Remember ``probe`` under ``root`` (atomically). A memo only: where it cannot be
    written (a full disk, a read-only cache folder) nothing is kept and the headers are read
    again next time."""
    path = probe_path(root, source, max_pixels)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    rows = np.array(sorted(probe.reasons), dtype=np.int64)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temp, "wb") as f:
            np.savez(f, widths=probe.widths, heights=probe.heights, modes=probe.modes,
                     grey=probe.grey, digests=probe.digests, has_digest=probe.has_digest,
                     reason_rows=rows,
                     reason_texts=np.array([probe.reasons[r] for r in rows.tolist()],
                                           dtype=str))
        os.replace(temp, path)
    except OSError:
        with contextlib.suppress(OSError):
            temp.unlink()
        return
    cache_files.remember_listing(root, source.listing)


def probe_source(source: Source, *, root: Path, max_pixels: int, pool: WorkerPool,
                 stream: IO[str] | None) -> Probe:
    """Every file's header, from the remembered probe or read now (then remembered); files
    whose size another file shares are hashed too (byte-identical files share a size)."""
    probe = load_probe(root, source, max_pixels)
    if probe is not None:
        return probe
    sizes = np.asarray(source.sizes)
    _, inverse, counts = np.unique(sizes, return_inverse=True, return_counts=True)
    shared = counts[inverse] > 1
    items = [(i, file, size, bool(want), max_pixels)
             for i, (file, size, want) in enumerate(zip(source.files, source.sizes, shared))]
    probe = Probe.empty(len(items))
    progress = Progress("reading image headers", len(items), stream)
    for results in pool.map_chunks(probe_chunk, chunked(items, pool.workers, most=1024),
                                   size=len(items), progress=progress, count=len):
        for i, width, height, mode, grey, reason, digest in results:
            probe.set(i, _Header(width, height, mode, grey), reason, digest)
    progress.close()
    save_probe(root, source, max_pixels, probe)
    return probe


@dataclass(frozen=True)
class _Header:
    width: int
    height: int
    mode: str
    grey: bool


def probe_chunk(items: list[tuple[int, str, int, bool, int]]) -> list[tuple]:
    return [(i, *probe_file(file, size, want, max_pixels))
            for i, file, size, want, max_pixels in items]


def sample_headers(source: Source, max_pixels: int) -> list[Any]:
    """Headers of up to :data:`SAMPLE` files spread evenly over the source (fixed choice)."""
    from hpsearch.data_utils.own_images.headers import read_header

    picks = np.unique(np.linspace(0, len(source) - 1, min(SAMPLE, len(source))).astype(int))
    headers = []
    for i in picks.tolist():
        try:
            headers.append(read_header(source.files[i], max_pixels=max_pixels)[0])
        except ImageFileError:
            continue
    return headers


@dataclass(frozen=True)
class Decoded:
    """What decoding wrote into an ``images.npy`` of N rows.

    Attributes:
        reasons: row -> why the row's file was skipped (rows not listed were decoded).
        fingerprints: uint64 (N,), :func:`pixel_fingerprints` of the rows (0 for the rows in
            ``reasons``): rows with identical pixels share one.
        sums: int64 (2, C): per channel, the sum and the sum of squares of the pixel values
            (0-255) of the training rows (rows below ``n_train``; failed rows add nothing).
        probe: the headers seen, in row order (only when asked for).
        writeback: the flushing of the rows to disk, started as they were written.
        stats: int64 (N, 2), each file's size and modification time as read (only when
            asked for; -1, -1 where the file could not be stat-ed).
    """

    reasons: dict[int, str]
    fingerprints: np.ndarray
    sums: np.ndarray
    probe: Probe | None
    writeback: cache_files.Writeback
    stats: np.ndarray | None = None

    @property
    def decoded(self) -> np.ndarray:
        """bool (N,): the row holds its file's pixels."""
        ok = np.ones(len(self.fingerprints), dtype=bool)
        ok[list(self.reasons)] = False
        return ok


def decode_files(files: Sequence[str], target: Path, *, n_train: int, image_size: int,
                 channels: int, max_pixels: int, pool: WorkerPool, stream: IO[str] | None,
                 record_headers: bool, take_stats: bool = False) -> Decoded:
    """Decode ``files`` into the rows of a new ``images.npy`` at ``target``; the first
    ``n_train`` are the training rows (their pixel sums give the mean and std). With
    ``take_stats``, each file's size and time too (``fstat`` of the open file)."""
    n = len(files)
    shape = (n, channels, image_size, image_size)
    cache_files.create_images_file(target, shape)
    row_bytes = channels * image_size * image_size
    chunks = _tapered(chunked(range(n), pool.workers,
                              most=max(16, min(1024, CHUNK_BYTES // row_bytes))), pool.workers)
    tasks = [(str(target), shape, max_pixels, record_headers, take_stats, n_train, rows.start,
              list(files[rows.start:rows.stop])) for rows in chunks]
    decoded = Decoded({}, np.zeros(n, np.uint64), np.zeros((2, channels), np.int64),
                      Probe.empty(n) if record_headers else None, cache_files.Writeback(target),
                      np.full((n, 2), -1, np.int64) if take_stats else None)
    progress = Progress("decoding images", n, stream)
    for result in pool.map_chunks(decode_chunk, tasks, size=n, progress=progress,
                                  count=lambda r: r.stop - r.start):
        decoded.writeback.kick()  # the rows written so far go to disk while decoding
        rows = slice(result.start, result.stop)
        decoded.reasons.update({result.start + i: r for i, r in result.reasons.items()})
        decoded.fingerprints[rows] = result.fingerprints
        decoded.sums[...] += result.sums
        if decoded.stats is not None:
            decoded.stats[rows] = result.stats
        if decoded.probe is not None:
            _record(decoded.probe, result)
    skipped = len(decoded.reasons)
    progress.close(f"{skipped} skipped" if skipped else "")
    return decoded


def _tapered(chunks: list[range], workers: int) -> list[range]:
    """``chunks`` with the last ``2 * workers`` cut in quarters: a worker that finishes
    first waits at most a quarter chunk for the others (a whole one of 96 px JPEGs, 90 ms,
    was a tenth of building 10,000 of them on two cores)."""
    tail = 2 * workers
    if len(chunks) <= tail:
        return chunks
    pieces = [range(c.start + i * len(c) // 4, c.start + (i + 1) * len(c) // 4)
              for c in chunks[-tail:] for i in range(4)]
    return chunks[:-tail] + [p for p in pieces if len(p)]


def _record(probe: Probe, result: _Chunk) -> None:
    """Store one chunk's headers in ``probe`` (rows ``result.start`` on)."""
    assert result.headers is not None
    rows = slice(result.start, result.stop)
    reasons, probe.widths[rows], probe.heights[rows], probe.modes[rows], probe.grey[rows] = (
        result.headers)
    probe.reasons.update({result.start + i: r for i, r in reasons.items()})
    probe.digests[rows], probe.has_digest[rows] = result.file_digests


@dataclass(frozen=True)
class _Chunk:
    """What a worker sends back for one chunk: arrays, not a Python object per file (the
    process collecting them shares the cores with the workers).

    Attributes:
        start, stop: its rows.
        reasons: index in the chunk -> why that file was skipped.
        file_digests: (uint8 (K, 16), bool (K,) known): :func:`file_digest` of each file
            read but not decodable (a decoded file is hashed only when its pixels are
            another row's, see the build's leakage check); kept in a recorded probe.
        fingerprints: uint64 (K,), :func:`pixel_fingerprints` of the rows.
        sums: int64 (2, C), see :class:`Decoded`.
        headers: when recorded, as a header probe reads them: (index -> why the header is
            unusable, widths int32 (K,), heights int32 (K,), modes str (K,), grey bool (K,)).
        stats: when taken, int64 (K, 2): see :class:`Decoded`.
    """

    start: int
    stop: int
    reasons: dict[int, str]
    file_digests: tuple[np.ndarray, np.ndarray]
    fingerprints: np.ndarray
    sums: np.ndarray
    headers: tuple[dict[int, str], np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None
    stats: np.ndarray | None


def _digests(digests: list[bytes | None]) -> tuple[np.ndarray, np.ndarray]:
    known = np.array([d is not None for d in digests], dtype=bool)
    blank = bytes(16)
    joined = b"".join(blank if d is None else d for d in digests)
    return np.frombuffer(joined, np.uint8).reshape(-1, 16), known


def decode_chunk(task: tuple[str, tuple[int, int, int, int], int, bool, bool, int, int,
                             list[str]]) -> _Chunk:
    """Decode consecutive files into rows ``start, start + 1, ...`` of the cache being built.

    Each image is copied once, into the chunk's rows (:class:`ChunkRows`), which are moved
    to channels first in one array operation for RGB and written with one ``os.pwrite`` (an
    array per image, or writing row by row through a memory map of the new sparse file, cost
    up to a third of decoding a small PNG). Small images to resize are resized after the
    loop, those of one size together (:func:`resize_group`).

    Returns:
        The chunk's :class:`_Chunk`.
    """
    target, shape, max_pixels, record_headers, take_stats, n_train, start, files = task
    channels, image_size = shape[1], shape[2]
    out = ChunkRows(len(files), image_size, channels)
    grouped: dict[tuple[int, int], list[tuple[int, Image.Image]]] = {}  # size -> (i, image)
    reasons: dict[int, str] = {}
    fdigs: list[bytes | None] = []
    headers: list[tuple] = []
    stats: list[tuple[int, int]] = []
    with bomb_warnings_ignored():
        for i, file in enumerate(files):
            header, header_reason, reason, fdig = None, None, None, None
            try:
                if take_stats:
                    data, size, mtime = read_file_stat(file)
                    stats.append((size, mtime))
                else:
                    data = read_file(file)
                image, header = decode_unresized(data, image_size=image_size,
                                                 channels=channels, max_pixels=max_pixels)
                if (image.width * image.height <= GROUP_PIXELS
                        and image.size != (image_size, image_size)):
                    grouped.setdefault(image.size, []).append((i, image))
                else:
                    out.put(i, resize_square(image, image_size))
            except OSError as exc:
                reason = header_reason = _os_error_reason(exc)
                if take_stats and len(stats) == i:  # not opened: stat the path
                    stats.append(stat_of(file))
            except ImageFileError as exc:
                reason = exc.reason
                fdig = file_digest(data)
                try:  # what the header alone says, as a header probe (and inspect) reads it
                    header = header_of(data, max_pixels=max_pixels, fallback=data)
                except ImageFileError as header_exc:
                    header_reason = header_exc.reason
            if header_reason or reason:
                reasons[i] = header_reason or reason
            fdigs.append(fdig)
            if record_headers:
                headers.append((header_reason, 0, 0, "", False) if header is None else
                               (None, header.width, header.height, header.mode, header.grey))
    for group in grouped.values():  # small images of one size: resized together
        out.put_many([i for i, _ in group], resize_group([image for _, image in group],
                                                         image_size))
    rows = out.rows()
    cache_files.write_rows(Path(target), shape, start, rows)
    return _Chunk(start, start + len(files), reasons, _digests(fdigs),
                  pixel_fingerprints(rows), channel_sums(rows[:max(0, n_train - start)]),
                  _headers(headers) if record_headers else None,
                  np.array(stats, np.int64).reshape(-1, 2) if take_stats else None)


def _headers(headers: list[tuple]) -> tuple:
    header_reasons, widths, heights, modes, grey = zip(*headers)
    return ({i: r for i, r in enumerate(header_reasons) if r is not None},
            np.array(widths, np.int32), np.array(heights, np.int32), np.array(modes, "<U8"),
            np.array(grey, bool))
