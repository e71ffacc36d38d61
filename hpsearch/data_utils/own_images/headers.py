"""What an image file declares in its first bytes: size, colour mode, and whether it is grey,
without decoding it (for the default image size, the one-or-three-channel decision and the
inspection report).

PNG and JPEG headers are parsed here directly from the file's first 64 KiB: that costs a tenth
of ``PIL.Image.open`` (about 10 us against 75 us per file), which matters at 100,000 files.
Any other format, and a PNG or JPEG header this parser cannot follow, goes through Pillow, so
the answer is always Pillow's (tests compare the two on every mode).
"""

from __future__ import annotations

import hashlib
import os
import struct

from hpsearch.data_utils.own_images.preprocess import (
    MAX_IMAGE_PIXELS,
    ImageFileError,
    ImageHeader,
    _os_error_reason,
    is_grey,
    open_image,
)

__all__ = ["HEAD_BYTES", "file_digest", "header_of", "probe_file", "read_file", "read_file_stat",
           "read_header", "stat_of"]

HEAD_BYTES = 65536  # a JPEG's EXIF and ICC segments come before its frame header
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour type -> Pillow mode (bit depth 16 for colour type 0 is "I;16", 1 is "1").
_PNG_MODES = {0: "L", 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}
_JPEG_MODES = {1: "L", 3: "RGB", 4: "CMYK"}
# Start-of-frame markers: C0-CF except DHT (C4), JPG (C8) and DAC (CC).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def read_header(path: str, *, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[ImageHeader, bytes]:
    """The header of the image file at ``path``, and the file's first :data:`HEAD_BYTES`.

    Raises:
        ImageFileError: the file is empty, unreadable, not an image, or a decompression bomb.
    """
    try:
        head = read_file(path, HEAD_BYTES)
    except OSError as exc:
        raise ImageFileError(_os_error_reason(exc)) from None
    header = header_of(head, max_pixels=max_pixels, fallback=path)
    assert header is not None
    return header, head


def header_of(head: bytes, *, max_pixels: int = MAX_IMAGE_PIXELS,
              fallback: str | bytes | None) -> ImageHeader | None:
    """The header in a file's first bytes: parsed here for PNG and JPEG, else read by Pillow
    from ``fallback`` (the path, or the whole file's bytes); None when parsing fails and
    there is no fallback.

    Raises:
        ImageFileError: empty, not an image, or a decompression bomb.
    """
    if not head:
        raise ImageFileError("empty file")
    header = _parse_png(head) or _parse_jpeg(head)
    if header is None:
        if fallback is None:
            return None
        with open_image(fallback, max_pixels=max_pixels) as image:
            return ImageHeader(image.width, image.height, image.mode, is_grey(image))
    if header.width * header.height > max_pixels:
        raise ImageFileError(f"decompression bomb: declares {header.width:,} x "
                             f"{header.height:,} pixels, more than the limit of {max_pixels:,}")
    if header.width < 1 or header.height < 1:
        raise ImageFileError(f"declares an empty image ({header.width} x {header.height} "
                             "pixels)")
    return header


def file_digest(data: bytes | memoryview) -> bytes:
    """The first 16 bytes of the SHA-256 of a file's bytes (byte-identical files share it).

    SHA-256 rather than BLAKE2b: CPUs with SHA extensions (x86 since about 2017-2019, ARMv8)
    hash it twice as fast through OpenSSL (9 KB: 5.0 us against 8.9 us here).
    """
    return hashlib.sha256(data).digest()[:16]


def read_file(path: str, limit: int | None = None) -> bytes:
    """A file's bytes (its first ``limit`` bytes, if given), read to the end with plain
    ``os.read`` calls: half the time of ``open().read()`` for a small file (2.7 us against
    5.0 us for a 300-byte PNG).

    Raises:
        OSError: as ``open`` would.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        return _read_to_end(fd, limit)
    finally:
        os.close(fd)


def read_file_stat(path: str) -> tuple[bytes, int, int]:
    """A file's bytes, size (bytes) and modification time (ns), the last two from ``fstat``
    of the open file (the values ``stat`` of its path gives, symlinks followed).

    Raises:
        OSError: as ``open`` would.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        data = os.read(fd, st.st_size) if st.st_size else b""  # most files: one read
        if len(data) < st.st_size or not data:  # a short read, or a file stat sizes at 0
            data += _read_to_end(fd, None)
        return data, st.st_size, st.st_mtime_ns
    finally:
        os.close(fd)


def stat_of(path: str) -> tuple[int, int]:
    """(size in bytes, modification time in ns) of a path, symlinks followed; (-1, -1) where
    ``stat`` fails."""
    try:
        st = os.stat(path)
    except OSError:
        return -1, -1
    return st.st_size, st.st_mtime_ns


def _read_to_end(fd: int, limit: int | None) -> bytes:
    parts, size, ask = [], 0, HEAD_BYTES
    while limit is None or size < limit:
        more = os.read(fd, ask if limit is None else min(ask, limit - size))
        if not more:
            break
        parts.append(more)
        size, ask = size + len(more), 1 << 22
    return b"".join(parts)


def probe_file(path: str, size: int, want_digest: bool, max_pixels: int
               ) -> tuple[int, int, str, bool, str | None, bytes | None]:
    """One file's probe, for a worker process: (width, height, mode, grey, reason the file
    is skipped or None, digest of its bytes when ``want_digest`` or None)."""
    try:
        header, head = read_header(path, max_pixels=max_pixels)
    except ImageFileError as exc:
        return 0, 0, "", False, exc.reason, None
    digest = None
    if want_digest:
        try:
            data = head if len(head) >= size else read_file(path)
        except OSError as exc:
            return 0, 0, "", False, _os_error_reason(exc), None
        digest = file_digest(data)
    return header.width, header.height, header.mode, header.grey, None, digest


def _parse_png(head: bytes) -> ImageHeader | None:
    """PNG: the IHDR chunk right after the signature; for a palette image, the PLTE chunk
    (which must come before the image data)."""
    if not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR" or len(head) < 33:
        return None
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    mode = _PNG_MODES.get(colour)
    if mode is None:
        return None
    if colour == 0 and depth == 16:
        mode = "I;16"
    elif colour == 0 and depth == 1:
        mode = "1"
    grey = colour in (0, 4)
    if colour == 3:
        palette = _png_chunk(head, b"PLTE")
        if palette is None:
            return None
        grey = palette[0::3] == palette[1::3] == palette[2::3]
    return ImageHeader(width, height, mode, grey)


def _png_chunk(head: bytes, kind: bytes) -> bytes | None:
    offset = 8
    while offset + 8 <= len(head):
        length, name = struct.unpack(">I4s", head[offset:offset + 8])
        if name == kind:
            data = head[offset + 8:offset + 8 + length]
            return data if len(data) == length else None
        if name == b"IDAT":
            return None
        offset += 12 + length
    return None


def _parse_jpeg(head: bytes) -> ImageHeader | None:
    """JPEG: walk the marker segments to the first start-of-frame (precision, height, width,
    number of components)."""
    if not head.startswith(b"\xff\xd8"):
        return None
    offset = 2
    while offset + 4 <= len(head):
        if head[offset] != 0xFF:
            return None
        marker = head[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            offset += 2
            continue
        if marker == 0xDA:  # start of scan before any frame header
            return None
        (length,) = struct.unpack(">H", head[offset + 2:offset + 4])
        if marker in _SOF_MARKERS:
            if offset + 10 > len(head):
                return None
            height, width, components = struct.unpack(">HHB", head[offset + 5:offset + 10])
            mode = _JPEG_MODES.get(components)
            if mode is None or height == 0:  # height 0: given later by a DNL segment
                return None
            return ImageHeader(width, height, mode, components == 1)
        offset += 2 + length
    return None
