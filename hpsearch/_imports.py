"""Import helpers: lazy re-exports for the packages whose modules need torch or MLflow (their
``__init__`` imports nothing heavy, and ``from hpsearch.training import fit`` imports only
what it names), and the import of a registry's plug-in modules on first use."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Collection, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) for ``package`` that imports ``name`` from
    ``package.exports[name]`` on first access.

    Raises (from the returned function):
        AttributeError: ``name`` is not one of ``exports``.
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    return __getattr__


def import_submodules(package: str, skip: Collection[str]) -> None:
    """Import every module of ``package`` (once; later calls cost a dict look-up each)
    except those in ``skip`` and private ones (``_name``): each registers itself."""
    for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
        if not module.name.startswith("_") and module.name not in skip:
            importlib.import_module(f"{package}.{module.name}")
