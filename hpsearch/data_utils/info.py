"""What a data set is, kept apart from how its images are shaped, normalised and augmented.

:class:`DatasetInfo` holds the classes; its :class:`ImageShape` is what every image is
(channels and side); its :class:`Normalization` is the per-channel statistics of its
training images; its :class:`Augmentation` is which label-preserving changes training may
make. Each consumer takes the part it needs: the models the shape and the number of classes,
the loaders the normalisation and the augmentation, the served model the classes, the shape
and the normalisation (through :meth:`DatasetInfo.to_dict` / :meth:`DatasetInfo.from_dict`,
plain JSON).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Augmentation", "DatasetInfo", "ImageShape", "Normalization"]


@dataclass(frozen=True)
class ImageShape:
    """The shape of every image of a data set: (channels, size, size).

    Attributes:
        channels: C, 1 (grey) or 3 (RGB).
        size: S, the side of the square images, pixels.

    Raises:
        ValueError: a value below 1.
    """

    channels: int
    size: int

    def __post_init__(self) -> None:
        if self.channels < 1 or self.size < 1:
            raise ValueError(f"image shape needs channels and size >= 1, got "
                             f"({self.channels}, {self.size})")

    def as_tuple(self) -> tuple[int, int, int]:
        """``(C, S, S)``, the shape of one image channels first."""
        return self.channels, self.size, self.size


@dataclass(frozen=True)
class Normalization:
    """Per-channel statistics the pixels are normalised with: ``(pixel / 255 - mean) / std``.

    Attributes:
        mean: one value per channel, on the 0-1 pixel scale.
        std: one value per channel, > 0, on the 0-1 pixel scale.

    Raises:
        ValueError: mean and std of different lengths, or a std that is not > 0.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"normalisation needs one mean and one std per channel, got "
                             f"{self.mean} and {self.std}")
        if not all(s > 0 and math.isfinite(s) for s in self.std):
            raise ValueError(f"normalisation std must be > 0, got {self.std}")


@dataclass(frozen=True)
class Augmentation:
    """The random, label-preserving changes training may make to an image.

    Attributes:
        hflip: mirror left-right with probability 0.5 (clothes and photos: yes; digits: no).
        crop_padding: zero padding in pixels on each side before a random crop back to the
            image's size (a random translation of up to that many pixels); 0: none.
    """

    hflip: bool = False
    crop_padding: int = 0

    def __post_init__(self) -> None:
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {self.crop_padding}")


@dataclass(frozen=True)
class DatasetInfo:
    """What a data set is: its name, its classes and the parts above.

    Attributes:
        name: the registry key (``"fashion_mnist"``) or, for a folder of one's own images,
            the folder's (or manifest's) base name.
        class_names: the class names, indexed by label (0 .. num_classes - 1).
        shape: every image's shape.
        normalization: the statistics of the training images.
        augmentation: what training may change.
    """

    name: str
    class_names: tuple[str, ...]
    shape: ImageShape
    normalization: Normalization
    augmentation: Augmentation = Augmentation()

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if len(self.normalization.mean) != self.shape.channels:
            raise ValueError(f"{self.name}: {len(self.normalization.mean)} normalisation "
                             f"values for {self.shape.channels} channel(s)")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data, read back by :meth:`from_dict` (the served model's config)."""
        return {"name": self.name, "class_names": list(self.class_names),
                "shape": {"channels": self.shape.channels, "size": self.shape.size},
                "normalization": {"mean": list(self.normalization.mean),
                                  "std": list(self.normalization.std)},
                "augmentation": {"hflip": self.augmentation.hflip,
                                 "crop_padding": self.augmentation.crop_padding}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetInfo:
        """The :class:`DatasetInfo` that :meth:`to_dict` wrote.

        Raises:
            KeyError, ValueError: ``data`` is not such a dict.
        """
        return cls(name=data["name"], class_names=tuple(data["class_names"]),
                   shape=ImageShape(**data["shape"]),
                   normalization=Normalization(**data["normalization"]),
                   augmentation=Augmentation(**data.get("augmentation", {})))

    @classmethod
    def build(cls, *, name: str, class_names: Sequence[str], channels: int, size: int,
              mean: Sequence[float], std: Sequence[float], hflip: bool = False,
              crop_padding: int = 0) -> DatasetInfo:
        """A :class:`DatasetInfo` from flat values (a data set record's one-liner)."""
        return cls(name=name, class_names=tuple(class_names), shape=ImageShape(channels, size),
                   normalization=Normalization(tuple(mean), tuple(std)),
                   augmentation=Augmentation(hflip, crop_padding))
