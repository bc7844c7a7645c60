"""Acceptance checks for images and bundles named in manifests, before any work is queued.

Pillow reads the size from the file header without decoding, so a tiny file that claims
40000 x 40000 pixels is refused in microseconds and nothing is allocated for it; only then is
the image fully decoded to prove it is intact.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFile

from intake.limits import MAX_REFERENCE_DECODE_PIXELS, MIN_BUNDLE_TILE
from models.bundle.spec import NUM_VIEWS, SPEC_NAME

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


def check_bundle(data: bytes, *, max_pixels: int, min_tile: int = MIN_BUNDLE_TILE) -> ImageInfo:
    """Accept ``data`` as a user-supplied bundle: a PNG twice as wide as high, even height,
    with square tiles of at least ``min_tile`` pixels.

    The layout is 2 rows x 4 columns of square tiles (BUNDLE_SPEC.md); a tile is
    ``height / 2`` pixels. Smaller tiles pass every stage up to evaluation and fail there, so
    they are refused here.
    """
    info = check_image(data, max_pixels=max_pixels, formats=("PNG",))
    if info.width != 2 * info.height or info.height % 2:
        raise ImageRejected(
            "bundle must be twice as wide as high with an even height (2 x 4 square tiles), "
            f"got {info.width} x {info.height}"
        )
    if info.height // 2 < min_tile:
        raise ImageRejected(
            f"bundle tiles are {info.height // 2} px, less than the minimum of {min_tile} px "
            f"(the bundle must be at least {4 * min_tile} x {2 * min_tile})"
        )
    return info


# Sidecar keys (models.bundle.spec.BundleSpec) -> (JSON type the key must have, its name).
_NUMBER = (int, float)
_SIDECAR_SCALARS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "spec": (str, "a string"),
    "tile": (int, "an integer"),
    "elevation": (_NUMBER, "a number"),
    "fov": (_NUMBER, "a number"),
    "distance": (_NUMBER, "a number"),
    "scale": (_NUMBER, "a number"),
    "producer": (str, "a string"),
}
_SIDECAR_LISTS = {"azimuths": NUM_VIEWS, "offset": 3}


def check_sidecar(data: bytes, *, tile: int | None = None) -> dict[str, Any]:
    """Accept ``data`` as a bundle's sidecar JSON (``x.json`` beside ``x.png``) or raise
    :class:`ImageRejected` naming the first problem.

    It must be UTF-8 JSON holding one object whose known keys (those of
    :class:`models.bundle.spec.BundleSpec`) have the right types: ``spec`` the spec name,
    ``tile`` a positive integer (equal to ``tile``, the bundle's tile in pixels, when given),
    ``azimuths`` 4 finite numbers (degrees), ``offset`` 3 finite numbers, the other numbers
    finite. Unknown keys are kept (the spec stores them as ``extra``).
    """
    try:
        value = json.loads(data.decode("utf-8-sig"), parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise ImageRejected("sidecar is not UTF-8 text") from None
    except (json.JSONDecodeError, ValueError, RecursionError) as exc:
        raise ImageRejected(f"sidecar is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ImageRejected(f"sidecar must be a JSON object, got a JSON {_json_type(value)}")
    for key, (types, name) in _SIDECAR_SCALARS.items():
        if key in value and (not isinstance(value[key], types) or isinstance(value[key], bool)):
            raise ImageRejected(
                f"sidecar {key!r} must be {name}, got a JSON {_json_type(value[key])}"
            )
        if key in value and isinstance(value[key], float) and not math.isfinite(value[key]):
            raise ImageRejected(f"sidecar {key!r} must be finite")
    for key, length in _SIDECAR_LISTS.items():
        if key not in value:
            continue
        items = value[key]
        if (
            not isinstance(items, list)
            or len(items) != length
            or not all(isinstance(v, _NUMBER) and not isinstance(v, bool) for v in items)
        ):
            raise ImageRejected(f"sidecar {key!r} must be a list of {length} numbers")
    if value.get("spec", SPEC_NAME) != SPEC_NAME:
        raise ImageRejected(f"sidecar spec {value['spec']!r} is not {SPEC_NAME!r}")
    if "tile" in value and value["tile"] <= 0:
        raise ImageRejected(f"sidecar tile must be positive, got {value['tile']}")
    if tile is not None and "tile" in value and value["tile"] != tile:
        raise ImageRejected(f"sidecar says tile {value['tile']} but the bundle's tile is {tile}")
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number")


def _json_type(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "list"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "null" if value is None else "string"


def load_reference_image(
    path: str | os.PathLike, max_pixels: int = MAX_REFERENCE_DECODE_PIXELS
) -> np.ndarray:
    """A reference image as ``(H, W, 3) uint8`` RGB, scaled down to at most ``max_pixels``.

    JPEG decodes straight at a reduced scale (``Image.draft``: 1/2, 1/4, 1/8 in the decoder),
    so a huge photo never exists at full size in memory; other formats decode once and are
    reduced (``Image.reduce`` by a whole factor, then a resample), and the full-size copy is
    dropped before any float work downstream. Aspect ratio is kept; an image within the
    bound comes back at its own size.
    """
    with Image.open(path) as opened:
        width, height = opened.size
        if width * height <= max_pixels:
            return np.asarray(_eight_bit(opened).convert("RGB"))
        scale = math.sqrt(max_pixels / (width * height))
        target = (max(1, int(width * scale)), max(1, int(height * scale)))
        opened.draft("RGB", target)  # a no-op for formats without reduced decoding
        img = _eight_bit(opened)
        factor = min(img.size[0] // target[0], img.size[1] // target[1])
        if factor > 1:
            img = img.reduce(factor)
        if img.size != target:
            img = img.resize(target, Image.Resampling.LANCZOS)
        return np.asarray(img.convert("RGB"))


def _eight_bit(img: Image.Image) -> Image.Image:
    """``img`` with 8 bits per channel: 16-bit grey (``I;16``, ``I``) keeps its top byte.

    Pillow's own ``convert("RGB")`` clips 16-bit values at 255 (a white image), and its
    ``reduce`` does not take these modes.
    """
    if img.mode.startswith("I"):
        values = np.asarray(img)
        values = values >> 8  # a new array of the same (16- or 32-bit) type, not int64
        if values.dtype != np.uint16:  # "I" is signed 32-bit: clip what 16 bits cannot hold
            values = np.clip(values, 0, 255)
        return Image.fromarray(values.astype(np.uint8), mode="L")
    if img.mode == "F":
        return Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8), mode="L")
    return img


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
