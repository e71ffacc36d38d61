"""The decoded-image cache: every image decoded once, into one uint8 array on disk.

A cache is a folder under :func:`default_cache_dir` (one for every data set) named after the
data set, the image size and its key, a digest of the manifest (each file's path, size,
modification time, label and split), the split assignment and the preprocessing settings and
code version. It holds:

- ``images.npy``: uint8 (N, C, S, S), the training rows first, then validation, then test,
  each split in file order, so that each split is a slice of one memory map;
- ``labels.npy``: int64 (N,);
- ``meta.json``: the settings, class names, the files of each split, the files skipped while
  decoding with the reason, leakage groups, and the training split's per-channel mean and std.

Atomic: a build writes into a ``.tmp-*`` folder and renames it to its final name only when
complete (files flushed to disk), so a killed build leaves nothing a later run reads (its
temp folder is removed by the next build on the same host). Concurrent builders of one key
take an exclusive lock (``flock``) and the later ones wait, then find the cache; where the
file system has no lock (some network file systems) each builds its own temp folder and the
first rename wins: a rename onto an existing, non-empty folder fails, and the loser discards
its copy and opens the winner's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

try:
    import fcntl
except ImportError:  # Windows: no flock; the rename decides
    fcntl = None  # type: ignore[assignment]

__all__ = ["CACHE_FORMAT", "CacheEntry", "cache_key", "default_cache_dir", "open_cache",
           "write_json_atomic"]

CACHE_FORMAT = 1
CACHE_DIR_ENV_VAR = "HPSEARCH_CACHE_DIR"
"""Environment variable naming the cache folder (before ``$XDG_CACHE_HOME/hpsearch/cache``)."""
_HEADER_BYTES = 128  # images.npy header, fixed so the shape can be rewritten in place


def default_cache_dir() -> Path:
    """``$HPSEARCH_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/hpsearch/cache`` (with
    ``~/.cache`` for an unset ``XDG_CACHE_HOME``)."""
    if os.environ.get(CACHE_DIR_ENV_VAR):
        return Path(os.environ[CACHE_DIR_ENV_VAR]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "hpsearch" / "cache"


def cache_key(settings: dict[str, Any]) -> str:
    """The digest of everything a cache's content depends on (a JSON-able dict)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    """An opened cache: memory maps and the metadata.

    Attributes:
        folder: the cache folder.
        images: read-only uint8 memory map (N, C, S, S).
        labels: int64 array (N,).
        meta: ``meta.json``'s content.
    """

    folder: Path
    images: np.ndarray
    labels: np.ndarray
    meta: dict[str, Any]


def remember_listing(root: Path, listing: str) -> None:
    """Note that a listing (:attr:`Source.listing`) was seen, with its files' sizes and times
    taken (a probe remembered, a cache built): its next load takes them before looking for a
    cache. A memo only: where it cannot be written, nothing is kept."""
    with contextlib.suppress(OSError):
        folder = root / "listings"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / listing[:32]).touch()


def listing_known(root: Path, listing: str, prefix: str) -> bool:
    """Whether a cache may exist for this listing: it was remembered, or some cache folder's
    name starts with ``prefix`` (the data set's name, as cache folders are named)."""
    if (root / "listings" / listing[:32]).exists():
        return True
    try:
        with os.scandir(root) as entries:
            return any(e.name.startswith(prefix + "-") for e in entries)
    except OSError:
        return False


def open_cache(folder: Path, stream: IO[str] | None = None, *,
               meta: dict[str, Any] | None = None) -> CacheEntry | None:
    """The cache in ``folder``, or None when there is none or it is not complete (then it is
    moved aside to ``.corrupt-*``, for a new build). ``meta``: its ``meta.json`` as the
    build that just wrote it has it (not read again)."""
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        return None
    try:
        if meta is None:
            meta = json.loads(meta_path.read_text())
        if meta.get("format") != CACHE_FORMAT:
            raise ValueError(f"cache format {meta.get('format')!r}")
        images = np.load(folder / "images.npy", mmap_mode="r")
        labels = np.load(folder / "labels.npy")
        n = sum(meta["rows"].values())
        want = (n, meta["channels"], meta["image_size"], meta["image_size"])
        if images.shape != want or labels.shape != (n,):
            raise ValueError(f"shapes {images.shape} / {labels.shape}, meta says {want}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        aside = folder.with_name(f".corrupt-{folder.name}-{uuid.uuid4().hex[:8]}")
        with contextlib.suppress(OSError):
            folder.rename(aside)
        if stream is not None:
            print(f"cache {folder} was not usable ({exc}); moved it to {aside.name}",
                  file=stream, flush=True)
        return None
    return CacheEntry(folder, images, labels, meta)


def write_json_atomic(path: Path, content: Any) -> None:
    """Write JSON to a temp file beside ``path``, then rename it over ``path``."""
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    temp.write_text(json.dumps(content, ensure_ascii=False))
    os.replace(temp, path)


@contextlib.contextmanager
def build_lock(root: Path, key: str, stream: IO[str] | None) -> Iterator[None]:
    """Hold the build lock of ``key``; without ``flock`` support, go on without one."""
    locks = root / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{key[:32]}.lock", "a+") as f:
        if fcntl is not None:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if stream is not None:
                    print("waiting for another process that is building the same cache ...",
                          file=stream, flush=True)
                fcntl.flock(f, fcntl.LOCK_EX)
            except OSError:
                pass  # no locks on this file system: the rename decides
        yield


def temp_folder(root: Path, key: str) -> Path:
    """A new build folder, with an ``owner`` file naming this host and process."""
    _remove_dead_builds(root)
    folder = root / f".tmp-{key[:16]}-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    (folder / "owner").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                              "started": time.time()}))
    return folder


def _remove_dead_builds(root: Path) -> None:
    """Temp folders of builds that died on this host (their process is gone)."""
    for folder in root.glob(".tmp-*"):
        try:
            owner = json.loads((folder / "owner").read_text())
        except (OSError, ValueError):
            continue
        if owner.get("host") == socket.gethostname() and not _alive(owner.get("pid", -1)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def create_images_file(path: Path, shape: tuple[int, int, int, int]) -> None:
    """An ``images.npy`` of ``shape`` (sparse) whose rows workers fill (:func:`write_rows`)."""
    with open(path, "wb") as f:
        f.write(_npy_header(shape))
        f.truncate(_HEADER_BYTES + int(np.prod(shape)))


def write_rows(path: Path, shape: tuple[int, int, int, int], start: int,
               rows: np.ndarray) -> None:
    """Write uint8 ``rows`` (K, C, S, S) as rows ``start .. start + K - 1`` of an
    ``images.npy`` of ``shape`` made by :func:`create_images_file` (copied to C order first
    when they are not in it).

    Raises:
        OSError: the write failed (a full disk: ``ENOSPC``).
    """
    view = memoryview(np.ascontiguousarray(rows)).cast("B")
    offset = _HEADER_BYTES + start * int(np.prod(shape[1:]))
    fd = os.open(path, os.O_WRONLY)
    try:
        while view:  # pwrite may write less than asked
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
    finally:
        os.close(fd)


def images_map(path: Path, shape: tuple[int, int, int, int]) -> np.memmap:
    """A writable memory map of an ``images.npy`` made by :func:`create_images_file`."""
    return np.memmap(path, dtype=np.uint8, mode="r+", offset=_HEADER_BYTES, shape=shape)


def drop_rows(path: Path, shape: tuple[int, int, int, int], keep: np.ndarray) -> int:
    """Remove the rows not in ``keep`` (bool (N,)) from an ``images.npy``, in place: the
    kept rows move up in order, the file is cut and its header rewritten. Returns the rows
    kept."""
    kept = int(keep.sum())
    if kept == len(keep):
        return kept
    images = images_map(path, shape)
    row_bytes = int(np.prod(shape[1:]))
    step = max(1, (64 << 20) // row_bytes)  # move at most 64 MiB at a time
    dst = 0
    for src in np.flatnonzero(keep):  # kept rows are few runs in practice; keep it simple
        if src != dst:
            images[dst] = images[src]
        dst += 1
        if dst % step == 0:
            images.flush()
    images.flush()
    del images
    with open(path, "r+b") as f:
        f.write(_npy_header((kept, *shape[1:])))
        f.truncate(_HEADER_BYTES + kept * row_bytes)
    return kept


IDLE_FLUSH_S = 5.0
"""Seconds a :class:`Writeback`'s thread waits for the next kick before it ends."""


class Writeback:
    """Flushes a file that is being written to disk (``fdatasync``) in a thread, again after
    each :meth:`kick` that came while a flush ran: a build kicks it as each chunk of rows
    arrives, so that the flush before the cache's rename finds little left to write (a cache
    of 92 MB took 45 ms of finishing otherwise). One thread, started by the first kick (a
    thread started per kick cost the collecting process 2 ms each, the cores being busy).
    What a flush raised (a full disk: ``OSError`` ENOSPC) is raised by the wait that
    :meth:`final` returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._asked = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._errors: list[OSError] = []

    def kick(self) -> None:
        """Ask for a flush of what is written so far (one runs now, or after the running one)."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = self._start(self._loop)
        self._asked.set()

    def final(self) -> Callable[[], None]:
        """Start the last flush (an ``fsync``, after the running one) in a thread; the
        returned function waits for it and raises what any flush raised."""
        previous = self._thread
        self._stopping = True
        self._asked.set()

        def flush() -> None:
            if previous is not None:
                previous.join()
            self._flush(full=True)

        thread = self._start(flush)

        def wait() -> None:
            thread.join()
            if self._errors:
                raise self._errors[0]

        return wait

    def _loop(self) -> None:
        while self._asked.wait(timeout=IDLE_FLUSH_S):  # a build that failed kicks no more
            self._asked.clear()
            if self._stopping:
                return
            self._flush()

    def _start(self, target: Callable[[], None]) -> threading.Thread:
        thread = threading.Thread(target=target, name="hpsearch-cache-flush", daemon=True)
        thread.start()
        return thread

    def _flush(self, full: bool = False) -> None:
        try:
            with open(self.path, "rb+") as f:
                (os.fsync if full else getattr(os, "fdatasync", os.fsync))(f.fileno())
        except OSError as exc:  # handed to the waiting thread
            self._errors.append(exc)


def finish(temp: Path, final: Path, meta: dict[str, Any], *,
           images_flushed: Callable[[], None] | None = None) -> Path:
    """Write ``meta.json``, flush every file to disk, rename ``temp`` to ``final``.

    Args:
        images_flushed: where ``images.npy`` is being flushed already, waits for it
            (:meth:`Writeback.final`).

    Returns ``final``; if another builder got there first, its cache stays and ``temp`` is
    removed.
    """
    (temp / "owner").unlink(missing_ok=True)
    (temp / "meta.json").write_text(json.dumps(meta, ensure_ascii=False))
    names = ("labels.npy", "meta.json") if images_flushed else (
        "images.npy", "labels.npy", "meta.json")
    for name in names:
        with open(temp / name, "rb+") as f:
            os.fsync(f.fileno())
    if images_flushed is not None:
        images_flushed()
    try:
        os.rename(temp, final)
    except OSError:
        if not (final / "meta.json").exists():
            raise
        shutil.rmtree(temp, ignore_errors=True)  # another builder's cache won
    _fsync_folder(final.parent)
    return final


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _npy_header(shape: Sequence[int]) -> bytes:
    """A NumPy format 1.0 header for uint8 C-order data of ``shape``, padded to a fixed
    :data:`_HEADER_BYTES` so that a smaller shape can replace it in place."""
    text = f"{{'descr': '|u1', 'fortran_order': False, 'shape': {tuple(shape)!r}, }}"
    body = text.ljust(_HEADER_BYTES - 10 - 1) + "\n"
    if len(body) != _HEADER_BYTES - 10:
        raise ValueError(f"shape {shape} too long for the fixed .npy header")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body.encode("latin1")
