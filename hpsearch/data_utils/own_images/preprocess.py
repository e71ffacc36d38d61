"""The one function that turns an image file into pixels, for the training cache and for
serving alike (so a served photo gets exactly the cached pixels of the same file).

:func:`preprocess_image`, for a file's bytes (or path):

1. opens it with Pillow, accepting only the raster formats of :data:`FORMATS` (Pillow's
   other plug-ins, EPS through Ghostscript for one, are never reached), and the first frame
   of an animated GIF or WEBP;
2. refuses an image that declares more than ``max_pixels`` pixels before decoding a byte of
   it (a decompression bomb: a small PNG can declare 30,000 x 30,000 pixels, 2.7 GB as RGB);
3. lets libjpeg decode a large JPEG at 1/2, 1/4 or 1/8 scale when that still leaves at least
   ``image_size`` pixels on each side (``Image.draft``): much faster, and the same here and in
   serving;
4. applies the EXIF orientation, so a photo is used as a viewer shows it;
5. converts the colour mode (see :data:`MODE_RULES`) to grey (``L``) for a one-channel data
   set and to ``RGB`` for a three-channel one;
6. resizes the centred square of side ``min(width, height)`` to ``image_size`` pixels
   (close to resizing the shorter side, then centre-cropping) with Pillow's antialiased
   bilinear filter, torchvision's ``Resize`` default: it has no ringing (LANCZOS and BICUBIC
   overshoot at edges) and it is the fastest of Pillow's antialiased filters. It runs as two
   explicit passes, horizontal then vertical (one Pillow resize call each, exactly the two
   passes one call makes, whose order Pillow would choose by the image's shape), so that a
   cache build can resize many small images of one size together (:func:`resize_group`: one
   tall image for the horizontal pass, one wide image for the vertical pass) and get the
   pixels of :func:`resize_square`, bit for bit.

Bump :data:`PREPROCESS_VERSION` with any change here that changes a pixel: the cache keys on it.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import warnings
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from hpsearch.data_utils.own_images.records import os_reason
from hpsearch.errors import first_line

__all__ = ["FORMATS", "GROUP_PIXELS", "MAX_IMAGE_PIXELS", "MODE_RULES", "PREPROCESS_VERSION",
           "ImageFileError", "ImageHeader", "bomb_warnings_ignored", "decode_image",
           "decode_pixels", "decode_unresized", "is_grey", "open_image", "preprocess_image",
           "resize_group", "resize_square"]

PREPROCESS_VERSION = 2  # 2: the resize's passes in a fixed order (1: Pillow's choice)
MAX_IMAGE_PIXELS = 89_478_485
"""Most pixels (width x height) an image may declare: Pillow's own warning threshold, about
a 9,500 x 9,500 photo, 0.25 GiB decoded as RGB."""
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM")
"""Pillow format plug-ins tried (JPEG includes MPO, a phone's JPEG with several pictures;
PPM includes PGM)."""
RESAMPLE = Image.Resampling.BILINEAR
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "F"})
MODE_RULES = """\
1, L: grey. LA, La: grey with alpha. P, PA: palette; grey when every palette entry is grey.
RGB, RGBA, RGBa, CMYK, YCbCr, LAB, HSV: colour (CMYK by Pillow's formula; ICC profiles are
not applied).
Alpha (LA, RGBA, PA, and a palette's or PNG's transparent colour): composited over white,
as a browser shows it on a white page (the colour under a transparent pixel is arbitrary).
I;16 and I (16-bit grey): scaled from 0..65535 to 0..255 (rounded), values outside clipped;
F (32-bit float): clipped to 0..255. A colour image in a grey data set becomes L by ITU-R
601 luma (Pillow's convert); a grey image in a colour data set is repeated on R, G and B.
"""
"""How each Pillow mode becomes L or RGB (documentation, shown by ``hpsearch data inspect``)."""


class ImageHeader(NamedTuple):
    """A file's declared image, before decoding (a named tuple: one is made per file).

    Attributes:
        width, height: pixels, as stored (before the EXIF orientation, which may swap them).
        mode: Pillow's mode name, e.g. ``"L"``, ``"RGB"``, ``"P"``, ``"I;16"``, ``"CMYK"``.
        grey: grey by :data:`MODE_RULES`.
    """

    width: int
    height: int
    mode: str
    grey: bool


class ImageFileError(ValueError):
    """A file that cannot be used as an image; ``reason`` says why in a short phrase."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def is_grey(image: Image.Image) -> bool:
    """Whether an opened (not necessarily decoded) image is grey by :data:`MODE_RULES`."""
    mode = image.mode
    if mode in GREY_MODES or mode.startswith("I;16"):
        return True
    if mode not in ("P", "PA"):
        return False
    # getpalette loads the image: before that, some plug-ins (TIFF) hold the palette in their
    # own layout. The header parser reads a PNG's palette without decoding.
    entries = np.asarray(image.getpalette("RGB") or [], dtype=np.uint8).reshape(-1, 3)
    return bool((entries[:, 0] == entries[:, 1]).all() and (entries[:, 1] == entries[:, 2]).all())


@contextlib.contextmanager
def bomb_warnings_ignored() -> Iterator[None]:
    """Pillow's ``DecompressionBombWarning`` silenced (the image size is checked against
    ``max_pixels`` right after opening instead). Entered once around a loop of
    :func:`decode_pixels` calls: entering it costs as much as a tenth of decoding a small PNG.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def open_image(source: bytes | str | os.PathLike[str], *,
               max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open an image file without decoding its pixels; check its declared size.

    Raises:
        ImageFileError: empty, not an image of :data:`FORMATS`, unreadable, or a
            decompression bomb (more than ``max_pixels`` pixels declared).
    """
    with bomb_warnings_ignored():
        return _open(source, max_pixels)


def _open(source: bytes | str | os.PathLike[str], max_pixels: int) -> Image.Image:
    """:func:`open_image`, with Pillow's bomb warning left to the caller."""
    if isinstance(source, bytes) and not source:
        raise ImageFileError("empty file")
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        image = _open_directly(source, fp, max_pixels) if isinstance(source, bytes) else None
        if image is None:
            image = Image.open(fp, formats=FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageFileError(f"decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise ImageFileError("not an image (Pillow cannot identify the file)") from None
    except OSError as exc:  # without an errno, a plug-in's (a JPEG cut inside its header)
        raise ImageFileError(_os_error_reason(exc) if exc.errno is not None else
                             f"truncated or corrupt header: {first_line(exc)}") from None
    except Exception as exc:  # Pillow's plug-ins raise many kinds on a corrupt header
        raise ImageFileError(f"corrupt header: {_describe(exc)}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageFileError(f"declares an empty image ({width} x {height} pixels)")
    if width * height > max_pixels:
        raise ImageFileError(f"decompression bomb: declares {width:,} x {height:,} pixels, "
                             f"more than the limit of {max_pixels:,}")
    return image


_DIRECT_FORMATS = FORMATS[:2]  # PNG, JPEG: most files; the first two Image.open would try


def _open_directly(data: bytes, fp: io.BytesIO, max_pixels: int) -> Image.Image | None:
    """``Image.open(fp, formats=FORMATS)`` for a PNG or a JPEG, without its fixed costs
    (plug-in set-up, the extension's plug-in, Pillow's own bomb check: ``max_pixels`` is
    checked after): the plug-in Pillow registered for the format, called when its check of
    the first bytes accepts them, as ``Image.open`` calls it; a 28 px PNG opens in 7 us
    instead of 10. None where ``Image.open`` must decide (another format, a plug-in that
    gave up, or a ``max_pixels`` above Pillow's own refusal, which the caller then gets).
    """
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > 2 * Image.MAX_IMAGE_PIXELS:
        return None
    prefix = data[:16]
    for name in _DIRECT_FORMATS:
        registered = Image.OPEN.get(name)
        if registered is None:
            return None
        factory, accept = registered
        if accept is not None and accept(prefix) is True:
            try:
                return factory(fp, "")
            except (SyntaxError, IndexError, TypeError, struct.error):
                fp.seek(0)
                return None  # Image.open tries the next formats and words the error
    return None


def preprocess_image(source: bytes | str | os.PathLike[str], *, image_size: int, channels: int,
                     max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """An image file as the pixels a model of this package sees (see the module docstring).

    Args:
        source: the file's bytes, or its path.
        image_size: side S of the square output, pixels (>= 1).
        channels: 1 (grey, ``L``) or 3 (``RGB``).
        max_pixels: most pixels the file may declare (see :data:`MAX_IMAGE_PIXELS`).

    Returns:
        uint8 array (channels, image_size, image_size), values 0-255.

    Raises:
        ImageFileError: the file cannot be used; ``reason`` says why (empty, not an image,
            truncated or corrupt data, a decompression bomb).
        ValueError: ``channels`` is not 1 or 3, or ``image_size`` < 1.
    """
    pixels, _ = decode_image(source, image_size=image_size, channels=channels,
                             max_pixels=max_pixels)
    return pixels.copy()  # decode_image's is a read-only view of Pillow's bytes


def decode_image(source: bytes | str | os.PathLike[str], *, image_size: int, channels: int,
                 max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[np.ndarray, ImageHeader]:
    """:func:`preprocess_image` (a read-only array), also returning what the file declares."""
    with bomb_warnings_ignored():
        pixels, header = decode_pixels(source, image_size=image_size, channels=channels,
                                       max_pixels=max_pixels)
    array = np.frombuffer(pixels, dtype=np.uint8).reshape(image_size, image_size, channels)
    return array.transpose(2, 0, 1), header


def decode_pixels(source: bytes | str | os.PathLike[str], *, image_size: int, channels: int,
                  max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[bytes, ImageHeader]:
    """The work of :func:`preprocess_image`, the pixels as Pillow gives them: bytes of a
    uint8 (image_size, image_size, channels) array (channels last), and what the file
    declares. For a loop over many files (a cache build's chunk): no array per image, and
    Pillow's bomb warning, for an image this function refuses anyway, is the caller's to
    silence (:func:`bomb_warnings_ignored`).

    Raises:
        ImageFileError, ValueError: as :func:`preprocess_image`.
    """
    image, header = decode_unresized(source, image_size=image_size, channels=channels,
                                     max_pixels=max_pixels)
    return resize_square(image, image_size).tobytes(), header


def decode_unresized(source: bytes | str | os.PathLike[str], *, image_size: int,
                     channels: int, max_pixels: int = MAX_IMAGE_PIXELS
                     ) -> tuple[Image.Image, ImageHeader]:
    """Steps 1 to 5 of :func:`preprocess_image`: the decoded image in ``L`` or ``RGB``, not
    resized yet (:func:`resize_square` is step 6), and what the file declares.

    Raises:
        ImageFileError, ValueError: as :func:`preprocess_image`.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size!r}")
    if not isinstance(source, bytes):  # from bytes, nothing is left open
        try:
            with open(source, "rb") as f:
                source = f.read()
        except OSError as exc:
            raise ImageFileError(_os_error_reason(exc)) from None
    image = _open(source, max_pixels)
    fmt, (width, height), mode = image.format, image.size, image.mode
    try:
        if min(width, height) >= 2 * image_size:  # else libjpeg would decode at 1/1
            image.draft(None, (image_size, image_size))  # JPEG only; a no-op for others
        image.load()
        header = ImageHeader(width, height, mode, is_grey(image))
        if _may_be_oriented(image):  # reading the EXIF costs more than decoding a thumbnail
            ImageOps.exif_transpose(image, in_place=True)
        return _to_mode(image, "L" if channels == 1 else "RGB"), header
    except ImageFileError:
        raise
    except Exception as exc:
        raise ImageFileError(f"{fmt + ' ' if fmt else ''}{_describe(exc)}") from None


GROUP_PIXELS = 64 * 64
"""Images of at most this many pixels (width x height) are worth resizing in groups
(:func:`resize_group`): below it, a Pillow call's fixed cost is most of a resize."""


def _boxes(width: int, height: int) -> tuple[tuple[float, float] | None,
                                             tuple[float, float] | None]:
    """The centred square's (left, right) and (top, bottom) edges, each None where that
    pass would copy the image unchanged."""
    side = min(width, height)
    across = None if width == side else ((width - side) / 2, (width + side) / 2)
    down = None if height == side else ((height - side) / 2, (height + side) / 2)
    return across, down


def resize_square(image: Image.Image, image_size: int) -> Image.Image:
    """Step 6 of :func:`preprocess_image`: the centred square of side ``min(width, height)``
    resized to ``image_size`` (an ``L`` or ``RGB`` image), horizontal pass, then vertical."""
    width, height = image.size
    if (width, height) == (image_size, image_size):
        return image
    across, down = _boxes(width, height)
    if across is not None or width != image_size:
        left, right = across or (0, width)
        image = image.resize((image_size, height), RESAMPLE, box=(left, 0, right, height))
    if down is not None or height != image_size:
        top, bottom = down or (0, height)
        image = image.resize((image_size, image_size), RESAMPLE,
                             box=(0, top, image_size, bottom))
    return image


def resize_group(images: Sequence[Image.Image], image_size: int) -> np.ndarray:
    """:func:`resize_square` of images of one size and mode (``L`` or ``RGB``) at once, bit
    for bit (images already of the target size: their pixels, copied out together).

    The horizontal pass of each image treats each row on its own, so it runs on the images
    pasted one below the other as one tall image; the vertical pass treats each column on
    its own, so it runs on the results side by side as one wide image: two Pillow calls
    instead of two per image (a 28 px grey image to 24 px: 7 us against 21 us). The images
    are pasted with the core's ``paste`` (Pillow's ``Image.paste`` checks cost 1.5 us an
    image; sizes and modes are equal here by construction).

    Returns:
        uint8 (len(images), S, S, channels), channels last.
    """
    count, (width, height), mode = len(images), images[0].size, images[0].mode
    channels = len(mode)
    across, down = _boxes(width, height)
    horizontal = across is not None or width != image_size
    vertical = down is not None or height != image_size
    if horizontal or not vertical:  # one below the other
        strip = Image.new(mode, (width, count * height))
        paste = strip.im.paste
        for i, image in enumerate(images):
            paste(image.im, (0, i * height, width, (i + 1) * height))
        if horizontal:
            left, right = across or (0, width)
            strip = strip.resize((image_size, count * height), RESAMPLE,
                                 box=(left, 0, right, count * height))
        rows = np.frombuffer(strip.tobytes(), np.uint8).reshape(count, height, image_size,
                                                                 channels)
        if vertical:  # side by side: (height, count, S, C)
            strip = Image.frombytes(mode, (count * image_size, height),
                                    np.ascontiguousarray(rows.transpose(1, 0, 2, 3)).tobytes())
    else:  # side by side
        strip = Image.new(mode, (count * width, height))
        paste = strip.im.paste
        for i, image in enumerate(images):
            paste(image.im, (i * width, 0, (i + 1) * width, height))
    if vertical:
        top, bottom = down or (0, height)
        strip = strip.resize((count * image_size, image_size), RESAMPLE,
                             box=(0, top, count * image_size, bottom))
        rows = np.frombuffer(strip.tobytes(), np.uint8).reshape(
            image_size, count, image_size, channels).transpose(1, 0, 2, 3)
    return np.ascontiguousarray(rows)


_ORIENTATION_SOURCES = frozenset({"exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp"})


def _may_be_oriented(image: Image.Image) -> bool:
    """Whether a loaded image holds anything ``Image.getexif`` reads an orientation from
    (its info, or a TIFF's tags: ``tag_v2``, which only Pillow's TIFF plug-in of
    :data:`FORMATS` has)."""
    return not _ORIENTATION_SOURCES.isdisjoint(image.info) or image.format == "TIFF"


def _to_mode(image: Image.Image, target: str) -> Image.Image:
    mode = image.mode
    if mode == target and "transparency" not in image.info:
        return image
    if mode == "I" or mode.startswith("I;16"):
        values = np.asarray(image).astype(np.int64)
        grey = ((np.clip(values, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
        image = Image.fromarray(grey)
    elif mode == "F":
        image = Image.fromarray(np.clip(np.rint(np.asarray(image)), 0, 255).astype(np.uint8))
    elif "A" in mode or "a" in mode or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint32)
        alpha = rgba[..., 3:]
        over_white = (rgba[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255
        image = Image.fromarray(over_white.astype(np.uint8))
    return image if image.mode == target else image.convert(target)


def _describe(exc: BaseException) -> str:
    text = first_line(exc) or type(exc).__name__
    if "truncated" in text or isinstance(exc, (EOFError, SyntaxError)):
        return f"truncated or corrupt: {text}"
    return first_line(text, limit=160)


def _os_error_reason(exc: OSError) -> str:
    return os_reason(exc) if exc.errno is not None else f"cannot be read: {exc}"
