"""Acceptance checks for images and bundles named in manifests, before any work is queued.

The size is read from the file header (PNG IHDR, JPEG SOF, WebP VP8/VP8L/VP8X) without
decoding, so a tiny file that claims 40000 x 40000 pixels is refused in microseconds and
nothing is allocated for it; only then is the image fully decoded to prove it is intact.
"""

from __future__ import annotations

import hashlib
import io
import struct
from dataclasses import dataclass

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic): they hold the size.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# Markers that stand alone, with no length field after them.
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD9)}


class ImageRejected(ValueError):
    """An image that may not enter the pipeline; the message is the reason shown to the user."""


@dataclass(frozen=True)
class ImageInfo:
    """What the checks learnt about an accepted image."""

    format: str
    """``PNG``, ``JPEG`` or ``WEBP``."""
    width: int
    """Pixels."""
    height: int
    """Pixels."""
    sha256: str
    """Hex SHA-256 of the file bytes: the image's identity in asset ids."""


def read_header_size(data: bytes) -> tuple[str, int, int]:
    """``(format, width, height)`` from the header bytes alone; raises :class:`ImageRejected`."""
    if data.startswith(_PNG_SIGNATURE):
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ImageRejected("PNG header is truncated or has no IHDR chunk")
        width, height = struct.unpack(">II", data[16:24])
        return "PNG", width, height
    if data.startswith(b"\xff\xd8"):
        return ("JPEG", *_jpeg_size(data))
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ("WEBP", *_webp_size(data))
    raise ImageRejected(f"not a PNG, JPEG or WebP image (starts with {data[:8]!r})")


def _jpeg_size(data: bytes) -> tuple[int, int]:
    i = 2
    n = len(data)
    while i < n:
        if data[i] != 0xFF:
            raise ImageRejected(f"JPEG marker expected at byte {i}")
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            break
        marker = data[i]
        i += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker == 0xD9 or i + 2 > n:  # end of image before any frame header
            break
        (length,) = struct.unpack(">H", data[i : i + 2])
        if marker in _JPEG_SOF:
            if i + 7 > n:
                break
            height, width = struct.unpack(">HH", data[i + 3 : i + 7])
            return width, height
        if length < 2:
            raise ImageRejected(f"JPEG segment with bad length {length} at byte {i}")
        i += length
    raise ImageRejected("JPEG has no frame header (SOF) with its size")


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
        return width, height
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    raise ImageRejected("WebP header is truncated or of an unknown kind")


def check_image(
    data: bytes, *, max_pixels: int, formats: tuple[str, ...] = ACCEPTED_FORMATS
) -> ImageInfo:
    """Accept ``data`` as an image or raise :class:`ImageRejected` with the reason.

    Checks in order: a known format (from the magic bytes), a header size of at most
    ``max_pixels`` (read without decoding), then a full decode that must succeed.
    """
    if not data:
        raise ImageRejected("image file is empty")
    fmt, width, height = read_header_size(data)
    if fmt not in formats:
        raise ImageRejected(f"image format {fmt} is not accepted here (expected {formats})")
    if width <= 0 or height <= 0:
        raise ImageRejected(f"image header says {width} x {height} pixels")
    if width * height > max_pixels:
        raise ImageRejected(
            f"image is {width} x {height} = {width * height} pixels, "
            f"more than the limit of {max_pixels}"
        )
    _decode_fully(data, fmt)
    return ImageInfo(fmt, width, height, hashlib.sha256(data).hexdigest())


def check_bundle(data: bytes, *, max_pixels: int) -> ImageInfo:
    """Accept ``data`` as a user-supplied bundle: a PNG twice as wide as high, even height.

    The layout is 2 rows x 4 columns of square tiles (BUNDLE_SPEC.md).
    """
    info = check_image(data, max_pixels=max_pixels, formats=("PNG",))
    if info.width != 2 * info.height or info.height % 2:
        raise ImageRejected(
            "bundle must be twice as wide as high with an even height (2 x 4 square tiles), "
            f"got {info.width} x {info.height}"
        )
    return info


def _decode_fully(data: bytes, fmt: str) -> None:
    """Decode every pixel; raises :class:`ImageRejected` if the data is damaged."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != fmt:
                raise ImageRejected(f"image decodes as {im.format}, but its header says {fmt}")
            im.verify()  # checksums (PNG CRCs) without decoding
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # the real decode: catches truncated or corrupt pixel data
    except ImageRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for damaged files
        raise ImageRejected(f"image cannot be decoded: {exc}") from None
