"""Image acceptance checks for manifest images and bundles (intake/images.py)."""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
import zlib

import pytest
from PIL import Image

from intake.images import ImageRejected, check_bundle, check_image, read_header_size
from intake.limits import MIN_BUNDLE_TILE


def _encode(fmt: str, size: tuple[int, int], **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 8)) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "fmt, kwargs",
    [("PNG", {}), ("JPEG", {}), ("JPEG", {"progressive": True}), ("WEBP", {}),
     ("WEBP", {"lossless": True})],
)
def test_header_size_matches_the_decoded_size_for_each_format(fmt, kwargs):
    data = _encode(fmt, (12, 8), **kwargs)
    assert read_header_size(data) == (fmt, 12, 8)
    info = check_image(data, max_pixels=1000)
    assert (info.format, info.width, info.height) == (fmt, 12, 8)


def test_image_identity_is_the_hash_of_its_bytes():
    a, b = _encode("PNG", (8, 8)), _encode("JPEG", (8, 8))
    assert check_image(a, max_pixels=64).sha256 == check_image(bytes(a), max_pixels=64).sha256
    assert check_image(a, max_pixels=64).sha256 != check_image(b, max_pixels=64).sha256


def test_a_40000_square_header_is_refused_fast_without_allocating():
    data = _png_claiming(40000, 40000)
    assert len(data) < 200
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(ImageRejected, match="40000 x 40000"):
        check_image(data, max_pixels=64_000_000)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 0.05
    assert peak < 1_000_000


def test_header_sizes_beyond_pillows_own_bomb_limit_are_read_not_refused():
    width = height = 40000  # far above Image.MAX_IMAGE_PIXELS: Image.open would raise
    assert width * height > 2 * Image.MAX_IMAGE_PIXELS
    assert read_header_size(_png_claiming(width, height)) == ("PNG", width, height)


def test_pixel_limit_is_inclusive():
    data = _encode("PNG", (8, 8))
    assert check_image(data, max_pixels=64).width == 8
    with pytest.raises(ImageRejected, match="more than the limit of 63"):
        check_image(data, max_pixels=63)


def test_truncated_png_is_refused_as_undecodable():
    data = _encode("PNG", (64, 64))
    with pytest.raises(ImageRejected, match="cannot be decoded"):
        check_image(data[: len(data) // 2], max_pixels=10_000)


def test_png_with_a_bad_checksum_is_refused():
    data = bytearray(_encode("PNG", (8, 8)))
    data[30] ^= 0xFF  # a byte of the IHDR CRC: the header still reads, the checksum fails
    with pytest.raises(ImageRejected):
        check_image(bytes(data), max_pixels=64_000)


@pytest.mark.parametrize("data", [b"", b"GIF89a" + b"\0" * 20, b"hello world"])
def test_unknown_or_empty_data_is_refused(data):
    with pytest.raises(ImageRejected):
        check_image(data, max_pixels=100)


def test_bundle_must_be_a_png_twice_as_wide_as_high():
    assert check_bundle(_encode("PNG", (16, 8)), max_pixels=1000, min_tile=4).width == 16
    with pytest.raises(ImageRejected, match="twice as wide"):
        check_bundle(_encode("PNG", (16, 16)), max_pixels=1000, min_tile=4)
    with pytest.raises(ImageRejected, match="twice as wide"):
        check_bundle(_encode("PNG", (14, 7)), max_pixels=1000, min_tile=4)  # odd height
    with pytest.raises(ImageRejected, match="not accepted"):
        check_bundle(_encode("JPEG", (16, 8)), max_pixels=1000, min_tile=4)


def test_a_bundle_with_tiles_below_the_minimum_is_rejected():
    smallest = 2 * MIN_BUNDLE_TILE  # the height of a bundle whose tiles are the minimum
    assert check_bundle(_encode("PNG", (2 * smallest, smallest)), max_pixels=10**6).height == (
        smallest
    )
    with pytest.raises(ImageRejected, match=f"less than the minimum of {MIN_BUNDLE_TILE} px"):
        check_bundle(_encode("PNG", (2 * smallest - 4, smallest - 2)), max_pixels=10**6)
