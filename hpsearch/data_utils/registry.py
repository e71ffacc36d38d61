"""The data set registry: one :class:`DatasetSource` per data set, registered by name.

Each data set is one module of :mod:`hpsearch.data_utils.datasets` that calls
:func:`register_dataset`; the modules are imported on first use. A new data set is one new file
there (see ``datasets/fashion_mnist.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hpsearch._imports import import_submodules
from hpsearch.data_utils.info import DatasetInfo

if TYPE_CHECKING:
    from hpsearch.data_utils.arrays import ArraySplit

__all__ = ["DatasetInfo", "DatasetSource", "get_dataset", "get_dataset_info", "list_datasets",
           "register_dataset"]


# Reads a folder: (train, test), or a short reason when the folder lacks the files. It takes
# a keyword ``train`` (default True): False reads only the test split (train is None), after
# checking that every file is there.
FolderReader = Callable[..., "tuple[ArraySplit | None, ArraySplit] | str"]


@dataclass(frozen=True)
class DatasetSource:
    """Where a data set's files come from and how they are read.

    Attributes:
        info: what the data set is.
        url: where its files are published.
        files: the files a folder must hold, in words (for "put ... in a folder" messages).
        read: reads those files from a folder (see :data:`FolderReader`); ``train=False``
            reads the test split only.
        folders: sub-folders of a data folder to look in, in order (``""`` is the folder).
        torchvision_class: the ``torchvision.datasets`` class that downloads the files.
        download_folder: where that class leaves the raw files under its root.
        system_folders: installed copies looked in after the data folder (Debian's package).
        install_hint: how to install such a copy, or ``""``.
    """

    info: DatasetInfo
    url: str
    files: str
    read: FolderReader
    folders: tuple[str, ...]
    torchvision_class: str
    download_folder: str
    system_folders: tuple[Path, ...] = ()
    install_hint: str = ""


_SOURCES: dict[str, DatasetSource] = {}
_PLUGINS = "hpsearch.data_utils.datasets"  # every public module there is a data set record


def register_dataset(source: DatasetSource) -> DatasetSource:
    """Register ``source`` under ``source.info.name``.

    Raises:
        ValueError: the name is taken.
    """
    if source.info.name in _SOURCES:
        raise ValueError(f"dataset {source.info.name!r} is already registered")
    _SOURCES[source.info.name] = source
    return source


def list_datasets() -> list[str]:
    """The registered data set names, sorted."""
    import_submodules(_PLUGINS)
    return sorted(_SOURCES)


def get_dataset(name: str) -> DatasetSource:
    """The registered source of data set ``name``.

    Raises:
        ValueError: If ``name`` is not registered; the message lists the choices.
    """
    import_submodules(_PLUGINS)
    try:
        return _SOURCES[name]
    except KeyError:
        choices = ", ".join(sorted(_SOURCES))
        raise ValueError(f"unknown dataset {name!r}; choose one of: {choices}") from None


def get_dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of data set ``name``; ValueError listing the choices if
    there is none."""
    return get_dataset(name).info
