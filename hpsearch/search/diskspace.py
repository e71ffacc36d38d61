"""A full disk during a study: which directory of the study's stores is full, and how much
space is left there, for the one line that stops the study (exit code 74)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from hpsearch.errors import DiskFull, is_disk_full

__all__ = ["disk_full_error"]


def disk_full_error(exc: BaseException, *, storage: str, tracking_uri: str,
                    artifact_location: str | None = None) -> DiskFull | None:
    """The :class:`~hpsearch.errors.DiskFull` that ``exc`` amounts to, or None if it does not
    say the disk is full (see :func:`~hpsearch.errors.is_disk_full`).

    The directory named is that of the file the error names, if it names one. Mostly it
    names none (sqlite says "database or disk is full"; an artifact copy's ENOSPC comes
    without a file name): then it is, of the places a study writes (the sqlite stores'
    directories, the local artifact location, the temporary directory, in this order, the
    first of each file system), the one with the least free space.

    Args:
        exc: what a write raised.
        storage: the Optuna storage URL.
        tracking_uri: the MLflow tracking URI.
        artifact_location: the experiment's artifact location (a path or ``file://`` URI;
            others are ignored).
    """
    if not is_disk_full(exc):
        return None
    known = _known(exc)
    if known is not None:  # raised where the full directory was known (an image cache)
        return known
    named = _named_directories(exc)
    candidates = named[:1] or [_sqlite_directory(storage), _sqlite_directory(tracking_uri),
                               _local_directory(artifact_location),
                               Path(tempfile.gettempdir())]
    by_device: dict[int, tuple[int, Path]] = {}
    for directory in filter(None, candidates):
        try:
            device, free = os.stat(directory).st_dev, shutil.disk_usage(directory).free
        except OSError:  # gone, or not reachable: not the one to name
            continue
        by_device.setdefault(device, (free, directory.resolve()))
    if not by_device:
        return DiskFull()
    free, directory = min(by_device.values(), key=lambda found: found[0])
    return DiskFull(str(directory), free)


def _known(exc: BaseException) -> DiskFull | None:
    """A :class:`DiskFull` naming its directory in ``exc``'s chain, or None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DiskFull) and exc.directory is not None:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _named_directories(exc: BaseException) -> list[Path]:
    """The directories of the files that OSErrors in ``exc``'s chain name."""
    found, seen, pending = [], set(), [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.filename:
            found.append(_existing_parent(Path(str(current.filename))))
        pending += [current.__cause__, current.__context__]
    return [d for d in found if d is not None]


def _sqlite_directory(url: str) -> Path | None:
    """The directory of a ``sqlite:///`` database (its path possibly percent-encoded, as in
    MLflow's default tracking URI)."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///"):].split("?", 1)[0]
    for candidate in (Path(unquote(path)), Path(path)):
        if candidate.absolute().parent.is_dir():
            return candidate.absolute().parent
    return _existing_parent(Path(path))


def _local_directory(location: str | None) -> Path | None:
    if not location:
        return None
    if location.startswith("file:"):
        location = unquote(urlparse(location).path)
    return _existing_parent(Path(location)) if location.startswith("/") else None


def _existing_parent(path: Path) -> Path | None:
    """``path`` itself if it is an existing directory, else its nearest existing ancestor
    (a store's file may not exist yet); None for a relative path that resolves nowhere."""
    path = path if path.is_absolute() else Path.cwd() / path
    for candidate in (path, *path.parents):
        if candidate.is_dir():
            return candidate
    return None
