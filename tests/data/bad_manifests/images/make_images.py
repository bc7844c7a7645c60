"""Recreate the corpus's tiny image files: `python tests/data/bad_manifests/images/make_images.py`.

ok.png: 8x8 RGB; bundle_8x8.png: a square "bundle" (wrong aspect); corrupt.png: a valid PNG
header followed by garbage; huge_header.png: a ~70-byte PNG whose IHDR claims 40000 x 40000;
text.png: plain text with a .png name; bundle_1px.png: a 4 x 2 bundle (1-px tiles);
sidecar_*.png: 256 x 128 bundles whose sidecars are a list, a wrong type (sidecar_link.json
is a committed symlink, not made here).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def huge_header_png(width: int = 40000, height: int = 40000) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    )


if __name__ == "__main__":
    Image.new("RGB", (8, 8), (200, 30, 30)).save(HERE / "ok.png")
    Image.new("RGB", (8, 8), (30, 30, 200)).save(HERE / "bundle_8x8.png")
    good = (HERE / "ok.png").read_bytes()
    (HERE / "corrupt.png").write_bytes(good[:33] + b"\x00garbage, not a zlib stream" * 4)
    (HERE / "huge_header.png").write_bytes(huge_header_png())
    (HERE / "text.png").write_text("this is not an image\n")
    Image.new("RGB", (4, 2), (30, 30, 200)).save(HERE / "bundle_1px.png")
    for name in ("sidecar_link", "sidecar_list", "sidecar_wrong_type"):
        Image.new("RGB", (256, 128), (255, 255, 255)).save(HERE / f"{name}.png", optimize=True)
    (HERE / "sidecar_list.json").write_text("[1, 2]\n")
    (HERE / "sidecar_wrong_type.json").write_text('{"spec": "kiss3d-bundle-v1", "tile": "64"}\n')
