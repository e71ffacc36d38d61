"""A spec's search space narrowed to what a study can search: choices left out (backbones
whose weights cannot be had), image sizes capped at the data set's. Works on the plain
data of :meth:`hpsearch.studies.spec.StudySpec.to_dict`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["sizes_up_to", "without_choices"]


def without_choices(entries: Mapping[str, Any], name: str, drop: set[Any]) -> dict[str, Any]:
    """Spec-file entries (:meth:`StudySpec.to_dict`'s ``search_space``) whose parameter
    ``name`` no longer offers the choices ``drop``, wherever it is drawn."""
    out = {}
    for key, entry in entries.items():
        if key == name and isinstance(entry, list):
            entry = [choice for choice in entry if choice not in drop]
        elif key == name and isinstance(entry, dict) and "type" not in entry:
            entry = {choice: sub for choice, sub in entry.items() if choice not in drop}
        if isinstance(entry, dict) and "type" not in entry:  # choices with branches
            entry = {choice: without_choices(sub, name, drop) for choice, sub in entry.items()}
        out[key] = entry
    return out


def sizes_up_to(entry: Any, size: int) -> tuple[Any, list[str]]:
    """(the entry without the image sizes above ``size`` or None if none is left, the sizes
    left out); a range's values above are left out as its upper bound."""
    if isinstance(entry, list):
        kept = [v for v in entry if v <= size]
        return (kept or None), [str(v) for v in entry if v > size]
    if isinstance(entry, dict):  # an int range
        if entry["high"] <= size:
            return entry, []
        dropped = [f"{max(entry['low'], size + 1)}..{entry['high']}"]
        return (None if entry["low"] > size else entry | {"high": size}), dropped
    return (entry, []) if entry <= size else (None, [str(entry)])
