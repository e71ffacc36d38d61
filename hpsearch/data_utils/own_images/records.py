"""The records the own-images modules share: split names, what a path lists, what was
skipped, and the one error for a path that cannot be used at all."""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["IMAGE_EXTENSIONS", "MANIFEST_SUFFIXES", "SPLITS", "SPLIT_FOLDERS",
           "UNREAD_IMAGE_FORMATS", "ImageDataError", "SkippedFile", "Source", "os_reason",
           "sort_labels", "unread_format_reason"]

# torchvision.datasets.folder.IMG_EXTENSIONS plus .gif (the first frame of a GIF is used).
IMAGE_EXTENSIONS = (".apng", ".bmp", ".gif", ".jfif", ".jpe", ".jpeg", ".jpg", ".mpo", ".pbm",
                    ".pgm", ".png", ".pnm", ".ppm", ".tif", ".tiff", ".webp")
"""Names of the files a folder's images are (any case): Pillow's extensions for the formats
decoded (preprocess.FORMATS), torchvision's ``IMG_EXTENSIONS`` and more (``.jfif``: a JPEG as
Windows saves it from a browser)."""
# Photo formats the decoder does not open (preprocess.FORMATS): skipped with a reason, from a
# folder or a manifest (a user with a folder of iPhone photos should hear why they were left
# out), not ignored like a .txt.
UNREAD_IMAGE_FORMATS = {".heic": "HEIC", ".heif": "HEIF", ".avif": "AVIF", ".dng": "raw",
                        ".cr2": "raw", ".cr3": "raw", ".nef": "raw", ".arw": "raw",
                        ".raf": "raw", ".orf": "raw", ".rw2": "raw", ".svg": "SVG",
                        ".psd": "Photoshop"}
MANIFEST_SUFFIXES = (".csv", ".tsv", ".jsonl")
SPLITS = ("train", "val", "test")
"""Split names; a split's code is its index here, ``-1`` for a file no split was given for."""
SPLIT_FOLDERS = {"train": 0, "val": 1, "valid": 1, "validation": 1, "test": 2}
"""Split folder names (and split column values, any case) -> split code; ``valid/`` is
Roboflow's export."""


class ImageDataError(ValueError):
    """A path that cannot be used as a data set at all; the message names the path and the
    reason (files that merely cannot be used are skipped, see :class:`SkippedFile`)."""


@dataclass(frozen=True)
class SkippedFile:
    """A file (or folder, ending in ``/``) left out of the data set, and why.

    Attributes:
        path: as shown to the user: relative to the folder, or as the manifest lists it.
        reason: one short phrase, e.g. ``"truncated PNG: image file is truncated"``.
    """

    path: str
    reason: str


@dataclass(frozen=True)
class Source:
    """What a folder or manifest lists, after the file-system checks.

    The per-file tuples are parallel, in a fixed order (sorted paths for a folder, manifest
    order for a manifest), and hold only files that exist as regular files with a label.

    Attributes:
        path: the folder or manifest, absolute.
        kind: ``"folder"`` or ``"manifest"``.
        class_names: sorted class names (see :func:`scan_source`); labels index into it.
        files: absolute paths, to read.
        names: the same files as shown to the user (relative to the folder or manifest).
        labels: int64-able class indices.
        splits: split codes (0 train, 1 val, 2 test), -1 where none was given.
        sizes: file sizes in bytes (empty until taken, see ``digest``).
        mtimes: modification times in nanoseconds (as ``sizes``).
        skipped: files left out at this stage, with the reason.
        ignored: files ignored silently (not images by their extension, hidden files).
        split_origin: ``"folders"``, ``"column"`` or ``""`` (no split given anywhere).
        listing: digest of the listing alone (names, labels, splits, class names).
        digest: digest of the listing and each file's size and modification time (the
            cache's key on the files); empty until the sizes and times are taken.
    """

    path: Path
    kind: str
    class_names: tuple[str, ...]
    files: tuple[str, ...]
    names: tuple[str, ...]
    labels: tuple[int, ...]
    splits: tuple[int, ...]
    sizes: tuple[int, ...]
    mtimes: tuple[int, ...]
    skipped: tuple[SkippedFile, ...] = ()
    ignored: int = 0
    split_origin: str = ""
    listing: str = field(default="", compare=False)
    digest: str = field(default="", compare=False)

    def __len__(self) -> int:
        return len(self.files)


def sort_labels(labels: Sequence[str]) -> tuple[str, ...]:
    """Distinct labels sorted: by number when each is a whole number, else as strings."""
    distinct = set(labels)
    if distinct and all(label.isdecimal() for label in distinct):
        return tuple(sorted(distinct, key=lambda label: (int(label), label)))
    return tuple(sorted(distinct))


def os_reason(exc: OSError) -> str:
    """A short reason for a failed ``stat`` or read."""
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if exc.errno == errno.ENOENT:
        if exc.filename is not None and not os.path.islink(exc.filename):
            return "no longer exists (removed after it was listed)"
        return "broken symlink (its target does not exist)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "cannot be read: permission denied"
    return f"cannot be read: {exc.strerror or exc}"


def unread_format_reason(name: str) -> str | None:
    """Why a file named ``name`` is skipped when its extension is a photo format that is not
    read (:data:`UNREAD_IMAGE_FORMATS`), else None."""
    kind = UNREAD_IMAGE_FORMATS.get(os.path.splitext(name)[1].lower())
    if kind is None:
        return None
    return f"{kind} image: a format hpsearch does not read (convert it to JPEG or PNG)"
