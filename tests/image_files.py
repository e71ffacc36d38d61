"""Real image files written with Pillow for the own-images tests: a folder per class, and
the broken and unusual files users have."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

RNG = np.random.default_rng(0)


def image_bytes(image: Image.Image, fmt: str = "PNG", **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def write(path: Path, image: Image.Image, fmt: str = "PNG", **save: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(image, fmt, **save))
    return path


def noise(mode: str = "RGB", size: tuple[int, int] = (20, 16), seed: int | None = None
          ) -> Image.Image:
    """Random pixels of ``mode`` ("L" or "RGB"), ``size`` = (width, height)."""
    rng = RNG if seed is None else np.random.default_rng(seed)
    shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def class_tree(root: Path, classes: dict[str, int], *, mode: str = "RGB",
               size: tuple[int, int] = (20, 16), split: str = "", fmt: str = "PNG") -> Path:
    """``root/[split/]class/i.png`` for each class and count; distinct random pixels."""
    for name, count in classes.items():
        for i in range(count):
            write(root / split / name / f"{i}.{fmt.lower()}", noise(mode, size), fmt)
    return root


def bomb_png(path: Path, width: int = 30_000, height: int = 30_000) -> Path:
    """A valid PNG signature and header declaring ``width`` x ``height`` 8-bit grey pixels,
    followed by a few bytes of image data: a few hundred bytes on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\x00" * 4096)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
                     + chunk(b"IEND", b""))
    return path


def exif_rotated_jpeg(path: Path, image: Image.Image, orientation: int = 6) -> Path:
    """``image`` stored as is, with an EXIF Orientation tag (6: a viewer rotates it 90
    degrees clockwise to show it)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return write(path, image, "JPEG", exif=exif.tobytes(), quality=95)


def truncated(path: Path, data: bytes, keep: float = 0.6) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: int(len(data) * keep)])
    return path
