"""Finding a data set's files (offline first) and reading them; downloading when needed.

Search order for data set ``name`` (its :class:`~hpsearch.data_utils.registry.DatasetSource`
says which sub-folders and installed copies):

- A folder the user names (``data_dir``, else ``$HPSEARCH_DATA_DIR``) is used or refused,
  never replaced by another copy: the folder itself and its conventional sub-folders
  (e.g. ``fashion-mnist``, ``FashionMNIST/raw``); else torchvision's download into it,
  unless it holds image files of the user's own (a download there would silently train on
  another data set than the one in the folder); else :class:`DataNotFoundError` saying
  which files the folder needs.
- Without one: installed copies (Debian's ``/usr/share/datasets/fashion-mnist``), a
  previous download in :func:`default_data_dir`, then torchvision's download into it.

Downloaded files are read with this package's own readers. :func:`load_dataset_with_origin`
also says where the files were read (the run header and the MLflow runs show it).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpsearch.data_utils.arrays import ArraySplit
from hpsearch.data_utils.registry import DatasetSource, get_dataset
from hpsearch.defaults import DATA_DIR_ENV
from hpsearch.errors import error_line

__all__ = ["DATA_DIR_ENV_VAR", "DataNotFoundError", "DataOrigin", "default_data_dir",
           "load_dataset", "load_dataset_with_origin"]

logger = logging.getLogger(__name__)

DATA_DIR_ENV_VAR = DATA_DIR_ENV  # hpsearch.defaults holds the name
"""Environment variable naming a folder to search before any other source."""

# Files a folder of the user's own images holds (serving reads PNG and JPEG; the rest are
# what image folders commonly hold besides).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class DataNotFoundError(Exception):
    """Raised by :func:`load_dataset` when no source could provide the data set.

    The message is one paragraph naming the data set, every place that was searched (and why
    each failed, including the download attempt) and how to provide the files.
    """


@dataclass(frozen=True)
class DataOrigin:
    """Where a data set's files were read.

    Attributes:
        folder: the folder holding the files that were read.
        downloaded: whether this call downloaded them there.
        url: where the data set is published (the download's origin).
    """

    folder: Path
    downloaded: bool = False
    url: str = ""

    def describe(self) -> str:
        """``/usr/share/datasets/fashion-mnist``, or ``a download of URL into FOLDER``."""
        return f"a download of {self.url} into {self.folder}" if self.downloaded \
            else str(self.folder)


def default_data_dir() -> Path:
    """Return the default download folder, ``$XDG_CACHE_HOME/hpsearch/data``.

    Falls back to ``~/.cache/hpsearch/data`` when ``XDG_CACHE_HOME`` is unset or empty.
    """
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "hpsearch" / "data"


def load_dataset(
    name: str, data_dir: str | Path | None = None, *, download: bool = True
) -> tuple[ArraySplit, ArraySplit]:
    """Load a data set's official train and test splits from the first source that has them
    (see the module docstring for the order).

    Args:
        name: A registered data set: ``cifar10``, ``fashion_mnist``, ``mnist``, ...
        data_dir: Folder to read (or download into), and no other; overrides
            ``$HPSEARCH_DATA_DIR``.
        download: Whether to try torchvision's download when no local copy is found.

    Returns:
        ``(train, test)``: uint8 images (N, C, H, W) and int64 labels (N,). For the three
        built-in sets N is 60000/10000 (MNIST, Fashion-MNIST) or 50000/10000 (CIFAR-10).

    Raises:
        ValueError: If ``name`` is unknown.
        DataFileError: a file that is present is empty, truncated, corrupt or inconsistent
            (the message names the file); a ValueError.
        pickle.UnpicklingError: If a CIFAR-10 batch file references a disallowed global.
        DataNotFoundError: If an explicit ``data_dir`` does not exist or lacks the files (and
            the download failed or was not tried), or every source failed; the message
            lists each place searched and how to provide the files.
    """
    train, test, _ = load_dataset_with_origin(name, data_dir, download=download)
    return train, test


def load_dataset_with_origin(
    name: str, data_dir: str | Path | None = None, *, download: bool = True,
    train: bool = True,
) -> tuple[ArraySplit | None, ArraySplit, DataOrigin]:
    """:func:`load_dataset`, and where the files were read (:class:`DataOrigin`).

    Args:
        train: read the training split too; False: only the test split is read (every
            file must still be there), and None stands for the training split.

    Raises:
        The same as :func:`load_dataset`.
    """
    source = get_dataset(name)
    if not train:
        source = _test_only(source)
    root = _resolve_root(data_dir)
    if root is not None:
        return _load_named_folder(source, root, download)
    attempts: list[str] = []
    for folder in _search_folders(source, None):
        result = _load_folder(source, folder)
        if not isinstance(result, str):
            logger.info("loaded %s from %s", name, folder)
            return (*result, DataOrigin(folder))
        attempts.append(f"{folder} ({result})")
    if download:
        result = _try_download(source, default_data_dir())
        if not isinstance(result, str):
            return result
        attempts.append(result)
    else:
        attempts.append("download (not attempted: download=False)")
    raise DataNotFoundError(f"Could not load the {name} data set. Looked in: "
                            f"{'; '.join(attempts)}. {_how_to_provide(source)}")


def _test_only(source: DatasetSource) -> DatasetSource:
    """``source`` whose reader reads only the test split (its files all checked first)."""
    import dataclasses

    def read(folder: Path, info: Any) -> tuple[None, ArraySplit] | str:
        return source.read(folder, info, train=False)

    return dataclasses.replace(source, read=read)


def _load_named_folder(source: DatasetSource, root: Path,
                       download: bool) -> tuple[ArraySplit, ArraySplit, DataOrigin]:
    """The data set from the folder the user named, or DataNotFoundError: never another
    copy (the user who names a folder means the data in it)."""
    attempts: list[str] = []
    for folder in _search_folders(source, root):
        result = _load_folder(source, folder)
        if not isinstance(result, str):
            logger.info("loaded %s from %s", source.info.name, folder)
            return (*result, DataOrigin(folder))
        attempts.append(f"{folder} ({result})")
    subs = ", ".join(sub for sub in source.folders if sub)
    needs = (f"Could not load the {source.info.name} data set from {root}, the folder given "
             f"with --data-dir or {DATA_DIR_ENV_VAR} (a named folder is used or refused, "
             f"never replaced by another copy): it needs {source.files} in it or in one of "
             f"its sub-folders {subs}")
    own = _own_images(root)
    if own:
        raise DataNotFoundError(f"{needs}; it holds {own} instead: to train on your own "
                                "images, pass the folder with --dataset")
    if download:
        result = _try_download(source, root)
        if not isinstance(result, str):
            return result
        attempts.append(result)
    else:
        attempts.append("download (not attempted: download=False)")
    elsewhere = ""
    if source.system_folders:
        elsewhere = (f" Without a data folder, the installed copy in "
                     f"{', '.join(map(str, source.system_folders))} is read"
                     f"{f' ({source.install_hint})' if source.install_hint else ''}.")
    raise DataNotFoundError(f"{needs}. Looked in: {'; '.join(attempts)}. The files are "
                            f"published at {source.url}.{elsewhere}")


def _own_images(root: Path, limit: int = 2000) -> str:
    """``"image files (cats/1.jpg, ...)"`` when ``root`` or its sub-folders (one level, a
    class per folder as torchvision's ImageFolder has them) hold image files, else ``""``.
    Looks at ``limit`` entries at most: a folder of a million photos answers as fast."""
    found: list[str] = []
    seen = 0
    try:
        for entry in os.scandir(root):
            children = [entry]
            if entry.is_dir():
                with os.scandir(entry.path) as sub:
                    children = [child for _, child in zip(range(50), sub)]
            for child in children:
                seen += 1
                if child.is_file() and child.name.lower().endswith(IMAGE_SUFFIXES):
                    found.append(os.path.relpath(child.path, root))
            if seen >= limit:
                break
    except OSError:
        return ""
    return f"image files ({', '.join(sorted(found)[:3])}, ...)" if found else ""


def _resolve_root(data_dir: str | Path | None) -> Path | None:
    """The folder the user named (``data_dir``, else ``$HPSEARCH_DATA_DIR``), or None.

    Raises:
        DataNotFoundError: the named folder does not exist.
    """
    given = "data_dir / --data-dir"
    if data_dir is None:
        data_dir, given = os.environ.get(DATA_DIR_ENV_VAR) or None, DATA_DIR_ENV_VAR
    if data_dir is None:
        return None
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataNotFoundError(
            f"Could not load data: the data directory {root} given with {given} does not "
            f"exist. Create it, or point --data-dir or {DATA_DIR_ENV_VAR} at the folder "
            "that holds the data set files."
        )
    return root


def _search_folders(source: DatasetSource, root: Path | None) -> list[Path]:
    if root is not None:  # the named folder and its conventional sub-folders, nothing else
        return [root / sub if sub else root for sub in source.folders]
    # A previous download into the default cache should be found without the network.
    return [*source.system_folders, default_data_dir() / source.download_folder]


def _load_folder(source: DatasetSource, folder: Path) -> tuple[ArraySplit, ArraySplit] | str:
    if not folder.is_dir():
        return "does not exist"
    return source.read(folder, source.info)


def _download_with_torchvision(source: DatasetSource, root: Path) -> None:
    """Download the raw files with torchvision into ``root`` (network access required).

    Raises:
        Exception: Whatever torchvision raises (no network, checksum mismatch, ...).
    """
    # Imported here so that reading local files never pays torchvision's import cost.
    from torchvision import datasets as tv_datasets

    cls = getattr(tv_datasets, source.torchvision_class)
    for train in (True, False):
        cls(root=str(root), train=train, download=True)


def _try_download(source: DatasetSource,
                  root: Path) -> tuple[ArraySplit, ArraySplit, DataOrigin] | str:
    """Download into ``root`` and read the result; return a reason string on failure."""
    folder = root / source.download_folder
    # The folders torchvision creates before it fails (no network): removed again if empty.
    relative = Path(source.download_folder)
    created = [root / p for p in (relative, *relative.parents)
               if p != Path(".") and not (root / p).exists()]  # deepest first
    try:
        _download_with_torchvision(source, root)
    except Exception as exc:
        for path in created:
            with contextlib.suppress(OSError):  # not empty (a partial file): left as it is
                path.rmdir()
        return f"download into {root} (failed: {error_line(exc, limit=200)})"
    result = _load_folder(source, folder)
    if isinstance(result, str):
        return f"download into {root} (finished, but {folder}: {result})"
    logger.info("downloaded %s into %s", source.info.name, root)
    return (*result, DataOrigin(folder, downloaded=True, url=source.url))


def _how_to_provide(source: DatasetSource) -> str:
    text = (f"To provide it, put {source.files} in a folder and pass that folder with "
            f"--data-dir or set {DATA_DIR_ENV_VAR} to it")
    if source.install_hint:
        text += f"; {source.install_hint}"
    return f"{text}. The files are published at {source.url}."
