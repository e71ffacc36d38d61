"""Class names as parts of MLflow metric keys (``val_f1/<part>``)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

__all__ = ["class_key_parts"]

_MAX_PART = 100  # MLflow allows 250 characters per key; leave room for the prefix


def class_key_parts(class_names: Sequence[str]) -> tuple[str, ...]:
    """Each class name as a valid MLflow metric-key part, distinct from the others.

    The name is NFKC-normalised and lower-cased; every run of characters other than letters,
    digits (any script: MLflow's key rule is Python's Unicode ``\\w``), ``_`` and ``-``
    becomes one ``_`` (so slashes, dots, quotes and spaces cannot nest or escape a key), and
    ``_`` at the ends is removed. ``"T-shirt/top"`` -> ``"t-shirt_top"`` and ``"Ankle boot"``
    -> ``"ankle_boot"``, as the built-in data sets' keys have always been. An empty result
    becomes ``class_<index>``; a part that an earlier class already took gets ``_<index>``
    appended (``"a b"`` and ``"a/b"`` -> ``"a_b"`` and ``"a_b_1"``).

    Args:
        class_names: the class names, in label order.

    Returns:
        One part per class, in the same order, all distinct.
    """
    parts: list[str] = []
    taken: set[str] = set()
    for index, name in enumerate(class_names):
        text = unicodedata.normalize("NFKC", str(name)).lower()
        part = re.sub(r"[^\w-]+", "_", text).strip("_")[:_MAX_PART] or f"class_{index}"
        candidate, extra = part, index
        while candidate in taken:
            candidate = f"{part}_{extra}"
            extra += len(class_names)
        taken.add(candidate)
        parts.append(candidate)
    return tuple(parts)
