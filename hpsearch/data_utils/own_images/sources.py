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
from pathlib import Path

import numpy as np

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
           "dataset_display_name", "is_path_dataset", "resolve_dataset", "scan_source"]

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
                label_column: str = "label", split_column: str | None = "split") -> Source:
    """List a folder or manifest's image files with their labels, splits, sizes and times.

    Class names are the sorted class folder names, or the sorted labels of a manifest (by
    number when every label is a whole number, so labels 0..9 keep their order).

    Args:
        path: a folder (one sub-folder per class, optionally under ``train/``, ``val/``,
            ``test/``) or a ``.csv`` / ``.tsv`` / ``.jsonl`` manifest.
        path_column, label_column, split_column: a manifest's column (JSONL: key) names; an
            absent split column means no split is given.

    Returns:
        The :class:`Source`, its ``digest`` set.

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
    return _with_digest(source)


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


def _with_digest(source: Source) -> Source:
    """The digest of everything that decides the cache's content except the settings: each
    file's name, size and modification time, its label (by name) and given split. Hashed as
    a few large buffers: a line per file would cost as much as the ``stat`` calls."""
    digest = hashlib.sha256(source.kind.encode())
    for strings in (source.class_names, source.names):
        digest.update("\0".join(strings).encode("utf-8", "surrogateescape") + b"\1")
    for numbers in (source.sizes, source.mtimes, source.labels, source.splits):
        digest.update(np.asarray(numbers, dtype=np.int64).tobytes())
    object.__setattr__(source, "digest", digest.hexdigest())
    return source


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
        files=tuple(walker.files), sizes=tuple(walker.sizes), mtimes=tuple(walker.mtimes),
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


class _Walker:
    """Walks class folders (following symlinks, skipping loops), collecting image files in
    columns, and what it skipped or ignored on the way. Written for speed: at 100,000 files
    the Python work per file costs as much as its ``stat``; a file whose name is not an
    image's is never ``stat``-ed, and shown paths are built as strings on the way down."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.skipped: list[SkippedFile] = []
        self.ignored = 0
        self.names: list[str] = []
        self.files: list[str] = []
        self.sizes: list[int] = []
        self.mtimes: list[int] = []
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
        names, files, sizes, mtimes = self.names, self.files, self.sizes, self.mtimes
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                self.ignored += 1
            elif name.lower().endswith(IMAGE_EXTENSIONS):
                try:
                    st = entry.stat()  # follows symlinks
                except OSError as exc:
                    self.skipped.append(SkippedFile(prefix + name, os_reason(exc)))
                    continue
                if stat.S_ISREG(st.st_mode):
                    names.append(prefix + name)
                    files.append(entry.path)
                    sizes.append(st.st_size)
                    mtimes.append(st.st_mtime_ns)
                else:
                    self._other(entry, prefix, ancestors)
            else:
                self._other(entry, prefix, ancestors)

    def _other(self, entry: os.DirEntry, prefix: str, ancestors: list[tuple[int, int]]) -> None:
        """A folder to walk into, a symlink loop, or a file ignored or skipped."""
        name = entry.name
        try:
            st = entry.stat()
        except OSError as exc:
            if entry.is_symlink():  # a broken link or a loop, whatever its name
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
