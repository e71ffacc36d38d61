"""Image files sent to the served model: base64-encoded in a column ``image`` (the convention
of MLflow's flower-classifier example), checked against the limits of one request, and turned
into pixels by :func:`hpsearch.data_utils.own_images.preprocess_image`, the function that
built the training cache of a folder of images. A training file sent to its champion gets
the very pixels the network was trained on; a photo of any size and colour mode sent to a
Fashion-MNIST champion is turned grey and resized to 28 px the same way.

Limits per request (each refusal names the limit and the image, by its row from 0):

- :data:`MAX_BATCH` images (as for pixel arrays);
- :data:`MAX_IMAGE_BYTES` per image file and :data:`MAX_REQUEST_BYTES` for all the files of
  one request, checked after base64 decoding, one file at a time, before any is decoded as
  an image;
- :data:`MAX_SERVED_PIXELS` per image as the file declares it, checked before a pixel is
  decoded (a decompression bomb: a small PNG that declares 30,000 x 30,000 pixels).

So a request never holds more than its image files and one decoded image at a time.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from hpsearch.data_utils import ImageShape
from hpsearch.data_utils.own_images import (
    PREPROCESS_VERSION,
    ImageFileError,
    preprocess_image,
)
from hpsearch.serving.images import MAX_BATCH, InvalidImages, check_batch_size

__all__ = ["IMAGE_COLUMN", "MAX_IMAGE_BYTES", "MAX_REQUEST_BYTES", "MAX_SERVED_PIXELS",
           "Preprocessing", "encode_image_file", "files_to_pixels", "files_to_unit_batch"]

IMAGE_COLUMN = "image"
MIB = 2**20
# A 12-megapixel photo is 3 to 8 MiB as JPEG, up to 25 MiB as PNG.
MAX_IMAGE_BYTES = 32 * MIB
# About 86 MiB of JSON once base64-encoded: 12 large photos, or 1024 small files at once.
MAX_REQUEST_BYTES = 64 * MIB
MAX_SERVED_PIXELS = 24_000_000
"""Most pixels (width x height) a served image file may declare: a 6,000 x 4,000 (24 MP)
photo. Below the training cache's limit (MAX_IMAGE_PIXELS, 89 MP) because a server decodes
whatever anyone sends. Measured growth of a process's peak memory in ``preprocess_image``:
an 81 MP transparent PNG of 337 KB, 3.7 GB (the alpha path composites in 32-bit copies);
at 24 MP, 1.1 GB transparent (105 KB), 0.44 GB 16-bit grey, 0.12 GB RGB, and 3 MB as a JPEG
(decoded at 1/8 scale)."""
_URL_SAFE = str.maketrans("-_", "+/")
_DATA_URL = "data:"  # "data:image/png;base64,...", as a browser's FileReader gives


@dataclass(frozen=True)
class Preprocessing:
    """What :func:`preprocess_image` needs to give a model its pixels: kept in the served
    model's ``config.json``.

    Attributes:
        image_size: side S of the model's square images, pixels.
        channels: 1 (grey) or 3 (RGB).
        max_pixels: most pixels (width x height) a file may declare
            (:data:`MAX_SERVED_PIXELS`).
        version: :data:`~hpsearch.data_utils.own_images.PREPROCESS_VERSION` of the code that
            built the training cache (the served model ships the same code).
    """

    image_size: int
    channels: int
    max_pixels: int = MAX_SERVED_PIXELS
    version: int = PREPROCESS_VERSION

    @classmethod
    def for_shape(cls, shape: ImageShape) -> Preprocessing:
        """The preprocessing of a model trained on images of ``shape``."""
        return cls(image_size=shape.size, channels=shape.channels)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        return cls(**data)


def files_to_unit_batch(files: Sequence[Any], preprocessing: Preprocessing) -> np.ndarray:
    """Base64-encoded image files as float32 (N, C, S, S) pixel values in [0, 1]: the
    pixels of :func:`files_to_pixels` divided by 255, as an integer pixel array would be.

    Raises:
        InvalidImages: see :func:`files_to_pixels`.
    """
    return files_to_pixels(files, preprocessing).astype(np.float32) / 255.0


def files_to_pixels(files: Sequence[Any], preprocessing: Preprocessing, *,
                    max_batch: int = MAX_BATCH, max_image_bytes: int = MAX_IMAGE_BYTES,
                    max_request_bytes: int = MAX_REQUEST_BYTES) -> np.ndarray:
    """Decode a request's image files into the pixels of the model.

    Args:
        files: per image, the file's bytes base64-encoded (the standard or the URL-safe
            alphabet, padded or not; line breaks and a ``data:...;base64,`` prefix allowed)
            as a string, or the raw bytes.
        preprocessing: the model's image size, channels and pixel limit.
        max_batch: most images.
        max_image_bytes: most bytes of one file (after base64 decoding).
        max_request_bytes: most bytes of all the files together.

    Returns:
        uint8 array (N, C, S, S), values 0-255, row i from ``files[i]``.

    Raises:
        InvalidImages: no image, too many, a value that is not base64 text, a file or the
            files together over their limit, or a file that is not a usable image (not an
            image, truncated, a decompression bomb); the message names the image by its row
            and the limit or the reason.
    """
    check_batch_size(len(files), max_batch)
    contents, total = [], 0
    for i, value in enumerate(files):
        content = _file_bytes(value, i)
        if len(content) > max_image_bytes:
            raise InvalidImages(f"image {i}: a file of {len(content):,} bytes, more than the "
                                f"limit of {_size(max_image_bytes)} per image file")
        total += len(content)
        if total > max_request_bytes:
            raise InvalidImages(f"image {i}: the image files up to this one hold {total:,} "
                                f"bytes, more than the limit of {_size(max_request_bytes)} "
                                "per request; send fewer images per request")
        contents.append(content)
    pixels = np.empty((len(files), preprocessing.channels, preprocessing.image_size,
                       preprocessing.image_size), dtype=np.uint8)
    for i, content in enumerate(contents):
        try:
            pixels[i] = preprocess_image(content, image_size=preprocessing.image_size,
                                         channels=preprocessing.channels,
                                         max_pixels=preprocessing.max_pixels)
        except ImageFileError as exc:
            raise InvalidImages(f"image {i}: {exc.reason}") from None
        contents[i] = b""  # one file's bytes less to hold while the next decodes
    return pixels


def encode_image_file(image: np.ndarray, fmt: str = "PNG") -> str:
    """One image as a base64-encoded image file, as a client sends it in column ``image``.

    Args:
        image: uint8 array (C, S, S) or (S, S), C 1 or 3 (a data set's stored layout).
        fmt: a Pillow format name (PNG is lossless: its pixels come back unchanged).

    Returns:
        The file's bytes in standard base64, one line.
    """
    import io

    from PIL import Image

    array = np.asarray(image)
    if array.ndim == 3:
        array = array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buffer, fmt)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _file_bytes(value: Any, index: int) -> bytes:
    """The file held by one cell of column ``image``."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value, str):
        missing = value is None or (isinstance(value, float) and math.isnan(value))
        got = "nothing" if missing else type(value).__name__
        raise InvalidImages(f"image {index}: expected an image file as a base64 string, got "
                            f"{got}")
    if value.startswith(_DATA_URL):
        value = value.partition(",")[2]
    text = "".join(value.split())  # line breaks are fine: base64 tools wrap
    if "-" in text or "_" in text:  # the URL- and file-name-safe alphabet (RFC 4648, 5)
        text = text.translate(_URL_SAFE)
    text += "=" * (-len(text) % 4)  # the padding, which base64url often leaves out
    try:  # other characters outside the alphabet are an error, not silently dropped
        content = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImages(f"image {index}: not base64-encoded ({exc})") from None
    if not content:
        raise InvalidImages(f"image {index}: no base64 data (an empty file)")
    return content


def _size(limit: int) -> str:
    """``33,554,432 bytes (32 MiB)``."""
    return f"{limit:,} bytes" + (f" ({limit // MIB} MiB)" if limit % MIB == 0 else "")
