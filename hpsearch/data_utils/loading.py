"""Finding a data set's files (offline first) and reading them; downloading when needed.

Search order for data set ``name`` (its :class:`~hpsearch.data_utils.registry.DatasetSource`
says which sub-folders and installed copies):

1. ``data_dir`` if given, else ``$HPSEARCH_DATA_DIR`` if set: the folder itself and its
   conventional sub-folders (e.g. ``fashion-mnist``, ``FashionMNIST/raw``);
2. installed copies (Debian's ``/usr/share/datasets/fashion-mnist``);
3. without a data folder: a previous download in :func:`default_data_dir`;
4. torchvision's downloader into the data folder, whose files are then read with this
   package's own readers.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from hpsearch.data_utils.arrays import ArraySplit
from hpsearch.data_utils.registry import DatasetSource, get_dataset

__all__ = ["DATA_DIR_ENV_VAR", "DataNotFoundError", "default_data_dir", "load_dataset"]

logger = logging.getLogger(__name__)

DATA_DIR_ENV_VAR = "HPSEARCH_DATA_DIR"
"""Environment variable naming a folder to search before any other source."""


class DataNotFoundError(Exception):
    """Raised by :func:`load_dataset` when no source could provide the data set.

    The message is one paragraph naming the data set, every place that was searched (and why
    each failed, including the download attempt) and how to provide the files.
    """


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
        data_dir: Folder to search first (and to download into); overrides
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
        DataNotFoundError: If an explicit ``data_dir`` does not exist, or every source failed;
            the message lists each place searched and how to provide the files.
    """
    source = get_dataset(name)
    root = _resolve_root(data_dir)
    attempts: list[str] = []
    for folder in _search_folders(source, root):
        result = _load_folder(source, folder)
        if not isinstance(result, str):
            logger.info("loaded %s from %s", name, folder)
            return result
        attempts.append(f"{folder} ({result})")
    if download:
        result = _try_download(source, root if root is not None else default_data_dir())
        if not isinstance(result, str):
            return result
        attempts.append(result)
    else:
        attempts.append("download (not attempted: download=False)")
    raise DataNotFoundError(f"Could not load the {name} data set. Looked in: "
                            f"{'; '.join(attempts)}. {_how_to_provide(source)}")


def _resolve_root(data_dir: str | Path | None) -> Path | None:
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise DataNotFoundError(
                f"Could not load data: the data directory {root} given with data_dir / "
                f"--data-dir does not exist. Create it, or point --data-dir or "
                f"{DATA_DIR_ENV_VAR} at the folder that holds the data set files."
            )
        return root
    env = os.environ.get(DATA_DIR_ENV_VAR)
    return Path(env).expanduser() if env else None


def _search_folders(source: DatasetSource, root: Path | None) -> list[Path]:
    folders = [root / sub if sub else root for sub in source.folders] if root else []
    folders += source.system_folders
    if root is None:
        # A previous download into the default cache should be found without the network.
        folders.append(default_data_dir() / source.download_folder)
    return folders


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


def _try_download(source: DatasetSource, root: Path) -> tuple[ArraySplit, ArraySplit] | str:
    """Download into ``root`` and read the result; return a reason string on failure."""
    try:
        _download_with_torchvision(source, root)
    except Exception as exc:
        return f"download into {root} (failed: {_short_reason(exc)})"
    folder = root / source.download_folder
    result = _load_folder(source, folder)
    if isinstance(result, str):
        return f"download into {root} (finished, but {folder}: {result})"
    logger.info("downloaded %s into %s", source.info.name, root)
    return result


def _short_reason(exc: BaseException) -> str:
    first_line = (str(exc).strip().splitlines() or [""])[0]
    reason = f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__
    return reason if len(reason) <= 200 else reason[:197] + "..."


def _how_to_provide(source: DatasetSource) -> str:
    text = (f"To provide it, put {source.files} in a folder and pass that folder with "
            f"--data-dir or set {DATA_DIR_ENV_VAR} to it")
    if source.install_hint:
        text += f"; {source.install_hint}"
    return f"{text}. The files are published at {source.url}."
