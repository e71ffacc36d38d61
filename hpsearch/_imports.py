"""Import helpers: lazy re-exports for the packages whose modules need torch or MLflow (their
``__init__`` imports nothing heavy, and ``from hpsearch.training import fit`` imports only
what it names), and the import of a registry's plug-in modules on first use."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence
from typing import Any


def lazy_exports(package: str, modules: Sequence[str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) for ``package``: ``name`` is looked up in its
    ``modules``, in order, each imported when the search reaches it (so list the lighter,
    more used ones first).

    Raises (from the returned function):
        AttributeError: no module of ``modules`` defines ``name``.
    """

    def __getattr__(name: str) -> Any:
        if not name.startswith("__"):
            for module in modules:
                found = importlib.import_module(f"{package}.{module}")
                if name in getattr(found, "__all__", ()):
                    return getattr(found, name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


def import_submodules(package: str) -> None:
    """Import every public module of the plug-in package ``package`` (once; later calls cost
    a dict look-up each): each registers itself. Private modules (``_name``) are helpers and
    are skipped; the package holds plug-ins only, so no other module needs excluding."""
    for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{package}.{module.name}")
