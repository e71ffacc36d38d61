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

import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

import hpsearch.data_utils.own_images.cache as cache_files
from hpsearch.data_utils.own_images.headers import file_digest, header_of, probe_file
from hpsearch.data_utils.own_images.preprocess import (
    ImageFileError,
    _os_error_reason,
    decode_image,
)
from hpsearch.data_utils.own_images.records import Source
from hpsearch.data_utils.own_images.workers import Progress, WorkerPool, chunked

__all__ = ["Probe", "decode_files", "load_probe", "probe_source", "save_probe"]

PROBE_VERSION = 2
SAMPLE = 256  # files whose headers decide a first build's guess


@dataclass(frozen=True)
class Probe:
    """The header of every file of a :class:`Source` (arrays in the source's order).

    Attributes:
        widths, heights: int32 (N,), pixels as stored (0 where the header is unusable).
        modes: str array (N,), Pillow modes ("" where unusable).
        grey: bool (N,).
        reasons: index -> why the file's header is unusable (a skipped file).
        digests: uint8 (N, 16), BLAKE2b of the file's bytes where ``has_digest``.
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
    path = probe_path(root, source, max_pixels)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    rows = np.array(sorted(probe.reasons), dtype=np.int64)
    with open(temp, "wb") as f:
        np.savez(f, widths=probe.widths, heights=probe.heights, modes=probe.modes,
                 grey=probe.grey, digests=probe.digests, has_digest=probe.has_digest,
                 reason_rows=rows, reason_texts=np.array([probe.reasons[r] for r in rows.tolist()],
                                                         dtype=str))
    os.replace(temp, path)


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
                                   size=len(items), progress=progress):
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
        reasons: N entries, why the row's file was skipped, or None.
        file_digests, pixel_digests: N 16-byte digests (None where unknown).
        sums: int64 (N, 2, C): per row and channel, the sum and the sum of squares of the
            pixel values (0-255).
        probe: the headers seen, in the rows' source order (only when asked for).
    """

    reasons: list[str | None]
    file_digests: list[bytes | None]
    pixel_digests: list[bytes | None]
    sums: np.ndarray
    probe: Probe | None


def decode_files(files: Sequence[str], target: Path, *, image_size: int, channels: int,
                 max_pixels: int, pool: WorkerPool, stream: IO[str] | None,
                 record_headers: bool) -> Decoded:
    """Decode ``files`` into the rows of a new ``images.npy`` at ``target``."""
    n = len(files)
    shape = (n, channels, image_size, image_size)
    cache_files.create_images_file(target, shape)
    tasks = [(str(target), shape, max_pixels, record_headers, chunk)
             for chunk in chunked(list(enumerate(files)), pool.workers)]
    decoded = Decoded([None] * n, [None] * n, [None] * n, np.zeros((n, 2, channels), np.int64),
                      Probe.empty(n) if record_headers else None)
    progress = Progress("decoding images", n, stream)
    for results in pool.map_chunks(decode_chunk, tasks, size=n, progress=progress):
        for row, header, header_reason, reason, fdig, pdig, sums in results:
            decoded.reasons[row] = header_reason or reason
            decoded.file_digests[row], decoded.pixel_digests[row] = fdig, pdig
            if sums is not None:
                decoded.sums[row] = sums
            if decoded.probe is not None:
                decoded.probe.set(row, header, header_reason, fdig)
    skipped = sum(r is not None for r in decoded.reasons)
    progress.close(f"{skipped} skipped" if skipped else "")
    _MAPS.pop(str(target), None)
    return decoded


_MAPS: dict[str, np.memmap] = {}  # a worker's writable map of the cache being built


def decode_chunk(task: tuple[str, tuple[int, int, int, int], int, bool, list[tuple[int, str]]]
                 ) -> list[tuple]:
    """Decode files into rows of the cache being built. Per file: (row, header, why the
    header is unusable, why decoding failed, file digest, pixel digest, per-channel [sum,
    sum of squares]); the header is read as a header probe reads it."""
    target, shape, max_pixels, record_headers, items = task
    images = _MAPS.get(target)
    if images is None:
        images = _MAPS[target] = cache_files.images_map(Path(target), shape)
    channels, image_size = shape[1], shape[2]
    results = []
    for row, file in items:
        try:
            with open(file, "rb") as f:
                data = f.read()
        except OSError as exc:
            results.append((row, None, _os_error_reason(exc), None, None, None, None))
            continue
        fdig = file_digest(data)
        header = None
        try:
            if record_headers:  # PNG and JPEG here; the others from the decoding below
                header = header_of(data, max_pixels=max_pixels, fallback=None)
            pixels, seen = decode_image(data, image_size=image_size, channels=channels,
                                        max_pixels=max_pixels)
        except ImageFileError as exc:
            header_reason = None
            if record_headers and header is None:
                try:
                    header = header_of(data, max_pixels=max_pixels, fallback=data)
                except ImageFileError as header_exc:
                    header_reason = header_exc.reason
            results.append((row, header, header_reason, exc.reason, fdig, None, None))
            continue
        images[row] = pixels
        flat = pixels.reshape(channels, -1).astype(np.int64)
        results.append((row, header or seen, None, None, fdig, file_digest(pixels.tobytes()),
                        [flat.sum(axis=1).tolist(), np.einsum("ij,ij->i", flat, flat).tolist()]))
    return results
