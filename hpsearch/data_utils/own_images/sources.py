"""A path given as a data set: what it lists, from the file system alone (``stat``, no image
decoding), and the digest that keys the cache on it.

Two forms:

- a folder with one sub-folder per class (torchvision ``ImageFolder``'s rule: class names are
  the sorted sub-folder names, files found recursively below each), optionally split at the
  top into ``train/``, ``val/`` (or ``valid/``, ``validation/``) and ``test/`` folders that
  each hold the class folders;
- a CSV, TSV or JSONL manifest (see :mod:`.manifests`).

Where this differs from torchvision, on purpose: names starting with ``.`` are ignored (the
``.ipynb_checkpoints`` folder is not a class, ``._photo.jpg`` from macOS is not a photo); a
class folder without any image is reported and ignored instead of failing; ``.gif`` counts as
an image; a symlink that leads back to a folder being walked is skipped as a loop (os.walk
would follow it until the path is too long, listing each file dozens of times).
"""

from __future__ import annotations

import hashlib
import operator
import os
import stat
from dataclasses import replace
from pathlib import Path

import numpy as np

from hpsearch.data_utils.own_images.headers import stat_of
from hpsearch.data_utils.own_images.manifests import scan_manifest
from hpsearch.data_utils.own_images.records import (
    IMAGE_EXTENSIONS,
    MANIFEST_SUFFIXES,
    SPLIT_FOLDERS,
    SPLITS,
    ImageDataError,
    SkippedFile,
    Source,
    os_reason,
    unread_format_reason,
)

__all__ = ["IMAGE_EXTENSIONS", "SPLITS", "ImageDataError", "SkippedFile", "Source",
           "dataset_display_name", "is_path_dataset", "resolve_dataset", "scan_source",
           "with_stats"]

def is_path_dataset(name: str | os.PathLike[str]) -> bool:
    """Whether ``name`` is taken as a path: it is not a registered data set name and a file
    or folder of that name exists (a registered name always wins)."""
    from hpsearch.data_utils.registry import list_datasets

    return str(name) not in list_datasets() and Path(name).expanduser().exists()


def resolve_dataset(name: str | os.PathLike[str]) -> str | Path:
    """A registered data set's name, or the absolute path ``name`` points at.

    Raises:
        ValueError: ``name`` is neither registered nor an existing path; the message lists
            the registered names and says that a path must exist.
    """
    from hpsearch.data_utils.registry import list_datasets

    registered = list_datasets()
    if str(name) in registered:
        return str(name)
    path = Path(name).expanduser()
    if path.exists():
        return path.resolve()
    raise ValueError(f"unknown dataset {str(name)!r}: not a registered data set (one of "
                     f"{', '.join(registered)}) and no file or folder of that name exists; "
                     "a folder of images or a .csv/.tsv/.jsonl manifest must exist")


def dataset_display_name(path: str | os.PathLike[str]) -> str:
    """A data set path's short name: the folder's base name, or the manifest's without its
    suffix (``./photos`` -> ``photos``, ``data/labels.csv`` -> ``labels``); never the whole
    path (a default study name)."""
    resolved = Path(path).expanduser().resolve()
    return resolved.stem if resolved.is_file() else resolved.name


def scan_source(path: str | os.PathLike[str], *, path_column: str = "path",
                label_column: str = "label", split_column: str | None = "split",
                stat_files: bool = True) -> Source:
    """List a folder or manifest's image files with their labels, splits, sizes and times.

    Class names are the sorted class folder names, or the sorted labels of a manifest (by
    number when every label is a whole number, so labels 0..9 keep their order).

    Args:
        path: a folder (one sub-folder per class, optionally under ``train/``, ``val/``,
            ``test/``) or a ``.csv`` / ``.tsv`` / ``.jsonl`` manifest.
        path_column, label_column, split_column: a manifest's column (JSONL: key) names; an
            absent split column means no split is given.
        stat_files: take each file's size and modification time (a ``stat`` call per file, most
            of the time a folder's listing takes); False: a folder's files are listed from
            the directory entries alone, without sizes, times or ``digest`` (see
            :func:`with_stats`). A manifest's files are always checked with ``stat``.

    Returns:
        The :class:`Source`, its ``listing`` digest set, and its ``digest`` when it has the
        files' sizes and times.

    Raises:
        ImageDataError: the path does not exist, is neither a folder nor a manifest, or
            lists no usable image, fewer than two classes, or (manifest) lacks a column.
    """
    root = Path(path).expanduser().absolute()
    if not root.exists():
        raise ImageDataError(f"{root}: does not exist")
    if root.is_dir():
        source = _scan_folder(root)
    elif root.suffix.lower() in MANIFEST_SUFFIXES:
        source = scan_manifest(root, path_column=path_column, label_column=label_column,
                               split_column=split_column)
    else:
        archive = root.name.lower().endswith(_ARCHIVE_SUFFIXES)
        raise ImageDataError(f"{root}: neither a folder of images nor a manifest (a .csv, "
                             ".tsv or .jsonl file)"
                             + ("; an archive: unpack it and give the folder" if archive else ""))
    _check_usable(source)
    object.__setattr__(source, "listing", _digest(source, with_stats=False))
    return with_stats(source) if stat_files or source.kind == "manifest" else source


def with_stats(source: Source, stats: np.ndarray | None = None) -> Source:
    """``source`` with each file's size and modification time, and its ``digest``.

    Args:
        source: a :class:`Source`; returned as it is when it has them already.
        stats: int64 (N, 2), each file's size (bytes) and modification time (ns) as the
            caller found them (a cache build takes them with ``fstat`` while reading the
            files); None: a ``stat`` call per file here. -1, -1 for a file that could not be
            stat-ed: it stays listed (its decoding reports why it is skipped).
    """
    if source.digest:
        return source
    if stats is None and len(source.sizes) != len(source.files):  # a manifest has them
        stats = np.array([stat_of(file) for file in source.files], dtype=np.int64).reshape(
            -1, 2)
    if stats is not None:
        source = replace(source, sizes=tuple(stats[:, 0].tolist()),
                         mtimes=tuple(stats[:, 1].tolist()))
    object.__setattr__(source, "digest", _digest(source, with_stats=True))
    return source


def _check_usable(source: Source) -> None:
    if not source.files:
        where = ("no image files (looked for " + ", ".join(IMAGE_EXTENSIONS) + ")"
                 if source.kind == "folder" else "no usable rows")
        found = len(source.skipped) + source.ignored
        raise ImageDataError(f"{source.path}: {where}"
                             + (f"; {found} other files skipped or ignored" if found else ""))
    if len(source.class_names) < 2:
        raise ImageDataError(
            f"{source.path}: only one class ({source.class_names[0]!r}); a classifier needs at "
            "least two" + (" (one sub-folder per class)" if source.kind == "folder" else ""))


def _digest(source: Source, *, with_stats: bool) -> str:
    """The digest of everything that decides the cache's content except the settings: each
    file's name, size and modification time, its label (by name) and given split; without
    the sizes and times, the digest of the listing alone. Hashed as a few large buffers: a
    line per file would cost as much as the ``stat`` calls."""
    digest = hashlib.sha256(source.kind.encode())
    for strings in (source.class_names, source.names):
        digest.update("\0".join(strings).encode("utf-8", "surrogateescape") + b"\1")
    columns = (source.sizes, source.mtimes) if with_stats else ()
    for numbers in (*columns, source.labels, source.splits):
        digest.update(np.asarray(numbers, dtype=np.int64).tobytes())
    return digest.hexdigest()


def _scan_folder(root: Path) -> Source:
    folders = _visible_folders(root)
    split_folders = {name for name in folders if name in SPLIT_FOLDERS}
    if "train" in split_folders:
        others = sorted(set(folders) - split_folders)
        if others:
            raise ImageDataError(f"{root}: holds split folders (train/ ...) and other folders "
                                 f"({', '.join(o + '/' for o in others)}); put class folders "
                                 "inside train/, val/ and test/ only")
        vals = sorted(name for name in split_folders if SPLIT_FOLDERS[name] == 1)
        if len(vals) > 1:
            raise ImageDataError(f"{root}: holds {' and '.join(v + '/' for v in vals)}, "
                                 "each a validation split; keep one")
        parts = [(root / name, name + "/", SPLIT_FOLDERS[name]) for name in sorted(folders)]
    else:
        parts = [(root, "", -1)]
    walker = _Walker(root)
    for folder, prefix, split in parts:
        walker.loose_files(folder, prefix)
        for name in _visible_folders(folder):
            walker.class_folder(folder / name, f"{prefix}{name}/", name, split)
    seen = walker.per_class
    walker.skipped += [SkippedFile(f"{name}/", "class folder holds no image: not a class")
                       for name in sorted(seen) if not seen[name]]
    class_names = tuple(sorted(name for name, n in seen.items() if n))
    index = {name: i for i, name in enumerate(class_names)}
    return Source(
        path=root, kind="folder", class_names=class_names, names=tuple(walker.names),
        files=tuple(walker.files), sizes=(), mtimes=(),
        labels=tuple(index[c] for c in walker.labels), splits=tuple(walker.splits),
        skipped=tuple(walker.skipped), ignored=walker.ignored,
        split_origin="folders" if parts[0][2] >= 0 else "")


def _visible_folders(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if not e.name.startswith(".") and _is_dir(e))


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _is_file(entry: os.DirEntry) -> bool:
    """A regular file (through a symlink too), from the entry's type where the file system
    gives it (no system call)."""
    try:
        return entry.is_file()
    except OSError:
        return False


class _Walker:
    """Walks class folders (following symlinks, skipping loops), collecting image files in
    columns, and what it skipped or ignored on the way. Written for speed: an image file is
    known regular from its directory entry (no ``stat``, except through a symlink), a file
    whose name is not an image's is ``stat``-ed only to tell a folder, and shown paths are
    built as strings on the way down."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.skipped: list[SkippedFile] = []
        self.ignored = 0
        self.names: list[str] = []
        self.files: list[str] = []
        self.labels: list[str] = []
        self.splits: list[int] = []
        self.per_class: dict[str, int] = {}  # class folder -> image files, over every split

    def loose_files(self, folder: Path, prefix: str) -> None:
        """Files directly in the root or a split folder belong to no class."""
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith(".") or _is_dir(entry):
                    continue
                if entry.name.lower().endswith(IMAGE_EXTENSIONS):
                    self.skipped.append(SkippedFile(prefix + entry.name,
                                                    "not inside a class folder"))
                else:
                    self.ignored += 1

    def class_folder(self, folder: Path, prefix: str, label: str, split: int) -> None:
        """Every image file below ``folder``, as class ``label`` of ``split``."""
        before = len(self.files)
        above = {_identity(f) for f in (self.root, folder.parent, folder)}
        self._walk(str(folder), prefix, list(above))
        found = len(self.files) - before
        self.labels += [label] * found
        self.splits += [split] * found
        self.per_class[label] = self.per_class.get(label, 0) + found

    def _walk(self, folder: str, prefix: str, ancestors: list[tuple[int, int]]) -> None:
        try:
            with os.scandir(folder) as scan:
                entries = sorted(scan, key=_NAME)
        except OSError as exc:
            self.skipped.append(SkippedFile(prefix, os_reason(exc)))
            return
        names, files = self.names, self.files
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                self.ignored += 1
            elif name.lower().endswith(IMAGE_EXTENSIONS) and _is_file(entry):
                names.append(prefix + name)
                files.append(entry.path)
            else:
                self._other(entry, prefix, ancestors)

    def _other(self, entry: os.DirEntry, prefix: str, ancestors: list[tuple[int, int]]) -> None:
        """A folder to walk into, a symlink loop, or a file ignored or skipped."""
        name = entry.name
        try:
            st = entry.stat()
        except OSError as exc:
            # a broken link or a loop, whatever its name; an image that cannot be stat-ed
            if entry.is_symlink() or name.lower().endswith(IMAGE_EXTENSIONS):
                self.skipped.append(SkippedFile(prefix + name, os_reason(exc)))
            else:
                self.ignored += 1
            return
        if stat.S_ISDIR(st.st_mode):
            identity = (st.st_dev, st.st_ino)
            if identity in ancestors:
                self.skipped.append(SkippedFile(f"{prefix}{name}/", "symlink loop: leads back "
                                                "to a folder above it"))
            else:
                self._walk(entry.path, f"{prefix}{name}/", [*ancestors, identity])
        elif name.lower().endswith(IMAGE_EXTENSIONS):
            self.skipped.append(SkippedFile(prefix + name, "not a regular file"))
        elif (reason := unread_format_reason(name)) is not None:
            self.skipped.append(SkippedFile(prefix + name, reason))
        else:
            self.ignored += 1


_NAME = operator.attrgetter("name")
_ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".7z", ".rar")


def _identity(folder: Path) -> tuple[int, int]:
    st = folder.stat()
    return st.st_dev, st.st_ino
