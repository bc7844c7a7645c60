"""Acceptance checks for images and bundles named in manifests, before any work is queued.

Pillow reads the size from the file header without decoding, so a tiny file that claims
40000 x 40000 pixels is refused in microseconds and nothing is allocated for it; only then is
the image fully decoded to prove it is intact.
"""

from __future__ import annotations

import hashlib
import io
import struct
from dataclasses import dataclass

from PIL import Image, ImageFile

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")

# Load every format plugin now, so the first check does not pay for it.
Image.init()


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
    image = _open_lazily(data)
    width, height = image.size
    return image.format, width, height


def _open_lazily(data: bytes) -> ImageFile.ImageFile:
    """The image of ``data`` with only its header read (no pixels decoded).

    What ``Image.open`` does for the accepted formats, without its decompression-bomb check
    (``Image.MAX_IMAGE_PIXELS``): the caller's ``max_pixels`` is the limit here, it may be
    above Pillow's default, and a refusal must name the claimed size, which Pillow's error
    does not.
    """
    prefix = data[:16]
    for fmt in ACCEPTED_FORMATS:
        factory, accept = Image.OPEN[fmt]
        accepted = accept(prefix) if accept else True
        if isinstance(accepted, str):  # Pillow's way of saying the plugin cannot read it here
            raise ImageRejected(f"{fmt} image cannot be read: {accepted}")
        if accepted:
            try:
                return factory(io.BytesIO(data), "")
            except (SyntaxError, OSError, ValueError, IndexError, TypeError, struct.error) as exc:
                raise ImageRejected(f"image cannot be decoded: {fmt} {exc}") from None
    raise ImageRejected(f"not a PNG, JPEG or WebP image (starts with {data[:8]!r})")


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
    _decode_fully(data)
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


def _decode_fully(data: bytes) -> None:
    """Decode every pixel; raises :class:`ImageRejected` if the data is damaged.

    Opened as :func:`_open_lazily` does: the size was accepted already, so Pillow's own
    default limit does not refuse a size the caller allowed.
    """
    try:
        _open_lazily(data).verify()  # checksums (PNG CRCs) without decoding
        _open_lazily(data).load()  # the real decode: catches truncated or corrupt pixel data
    except ImageRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for damaged files
        raise ImageRejected(f"image cannot be decoded: {exc}") from None
