"""The own-images side of a study spec: its ``dataset`` as a registered name or the path of a
folder or manifest, and how the images are read (:class:`ImageSettings`, the spec keys of
:data:`~hpsearch.studies.file.IMAGE_KEYS`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpsearch.studies.file import IMAGE_KEYS, SpecFile

__all__ = ["ImageSettings", "image_settings", "resolve_dataset_key"]


@dataclass(frozen=True)
class ImageSettings:
    """How a study reads a folder or manifest of its own images (the spec keys of the same
    names; :class:`hpsearch.data_utils.own_images.ImageOptions` takes them, with the spec's
    ``val_fraction`` and the run's seed).

    Attributes:
        image_size: side of the square images the cache holds, pixels (8..1024), or None for
            the default (the images' median shorter side, clipped to 16..224, rounded down to
            a multiple of 8).
        test_fraction: share of the training files carved out for the test split where none
            is given, in [0, 1).
        dedupe: drop images that are also in an earlier split from val and test.
        path_column, label_column, split_column: a manifest's column names.
    """

    image_size: int | None = None
    test_fraction: float = 0.1
    dedupe: bool = False
    path_column: str = "path"
    label_column: str = "label"
    split_column: str = "split"

    def to_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in IMAGE_KEYS}



def resolve_dataset_key(name: str, base: Path | None) -> str:
    """A spec's ``dataset``: a registered data set's name as it is, else the absolute path
    it names (a relative one read from ``base``, the spec file's folder; None: the working
    directory); a registered name wins over a path of the same name.

    Raises:
        ValueError: ``("dataset", reason)``: neither; the reason lists the registered names
            and says a path must exist.
    """
    from hpsearch.data_utils import list_datasets
    from hpsearch.data_utils.own_images import resolve_dataset

    registered = list_datasets()
    if name in registered:
        return name
    path = Path(name).expanduser()
    relative = base is not None and not path.is_absolute()
    try:
        return str(resolve_dataset(base / path if relative else path))
    except ValueError:
        where = f" (a relative path is read from the spec file's folder, {base})" if (
            relative) else ""
        raise ValueError("dataset", (
            f"{name!r} is not a registered data set (one of {', '.join(registered)}) and no "
            f"file or folder of that name exists{where}; a folder of images or a "
            ".csv/.tsv/.jsonl manifest must exist")) from None


def image_settings(file: SpecFile) -> ImageSettings:
    """The own-images settings of a spec file, the defaults where it names none.

    Raises:
        ValueError: ``(key, reason)``: val_fraction + test_fraction not below 1, or an
            empty path or label column name.
    """
    given = {key: getattr(file, key) for key in IMAGE_KEYS if getattr(file, key) is not None}
    settings = ImageSettings(**given)
    if file.val_fraction + settings.test_fraction >= 1:
        raise ValueError("test_fraction", (
            f"val_fraction + test_fraction must be below 1, got {file.val_fraction} + "
            f"{settings.test_fraction}"))
    for key in ("path_column", "label_column"):
        if not getattr(settings, key).strip():
            raise ValueError(key, "must name a column, got an empty string")
    return settings
