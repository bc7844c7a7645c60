"""A game-ready glTF 2.0 binary (GLB) writer: one textured (or vertex-coloured) primitive.

Written directly (not through trimesh) so the file holds exactly what engines and the Khronos
validator expect: ``POSITION``, ``NORMAL``, ``TANGENT``, ``TEXCOORD_0`` (or linear ``COLOR_0``),
``uint16``/``uint32`` indices, a metallic-roughness material (metallic 0, roughness 1) with a
``baseColorTexture`` (sRGB PNG) and a ``normalTexture`` (tangent space, PNG), and free-form
provenance in ``asset.extras``. Positions are in metres, +Y up, front +Z (glTF's frame).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.colour import srgb_to_linear
from models.geometry.glb import _join_glb

_FLOAT, _UINT16, _UINT32 = 5126, 5123, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_LINEAR, _LINEAR_MIPMAP_LINEAR, _REPEAT = 9729, 9987, 10497
_TYPES = {1: "SCALAR", 2: "VEC2", 3: "VEC3", 4: "VEC4"}


@dataclass
class GltfMesh:
    """One primitive to write. ``positions``/``normals`` ``(V, 3)``; ``faces`` ``(F, 3)`` int;
    ``uv`` ``(V, 2)`` glTF convention (top-left origin); ``tangents`` ``(V, 4)``;
    ``colours`` ``(V, 3)`` sRGB in [0, 1] (written linear as ``COLOR_0``); ``base_colour`` and
    ``normal_map`` ``(S, S, 3)`` uint8 images."""

    positions: np.ndarray
    faces: np.ndarray
    normals: np.ndarray
    uv: np.ndarray | None = None
    tangents: np.ndarray | None = None
    colours: np.ndarray | None = None
    base_colour: np.ndarray | None = None
    normal_map: np.ndarray | None = None
    name: str = "asset"
    extras: dict[str, Any] = field(default_factory=dict)


def write_glb(mesh: GltfMesh, path: str | Path) -> Path:
    """Write ``mesh`` to ``path`` as GLB; returns ``path``."""
    builder = _Builder()
    attributes = {
        "POSITION": builder.accessor(mesh.positions, _FLOAT, _ARRAY_BUFFER, bounds=True),
        "NORMAL": builder.accessor(mesh.normals, _FLOAT, _ARRAY_BUFFER),
    }
    if mesh.uv is not None:
        attributes["TEXCOORD_0"] = builder.accessor(mesh.uv, _FLOAT, _ARRAY_BUFFER)
    if mesh.tangents is not None and mesh.normal_map is not None:
        attributes["TANGENT"] = builder.accessor(mesh.tangents, _FLOAT, _ARRAY_BUFFER)
    if mesh.colours is not None:
        linear = srgb_to_linear(np.clip(np.asarray(mesh.colours, np.float64), 0.0, 1.0))
        attributes["COLOR_0"] = builder.accessor(linear, _FLOAT, _ARRAY_BUFFER)
    index_type = _UINT16 if len(mesh.positions) < 65535 else _UINT32
    indices = builder.accessor(
        np.asarray(mesh.faces).reshape(-1, 1), index_type, _ELEMENT_ARRAY_BUFFER
    )

    pbr: dict[str, Any] = {"metallicFactor": 0.0, "roughnessFactor": 1.0}
    material: dict[str, Any] = {"name": f"{mesh.name}_material", "pbrMetallicRoughness": pbr}
    if mesh.base_colour is not None:
        pbr["baseColorTexture"] = {"index": builder.texture(mesh.base_colour, "base_colour")}
    if mesh.normal_map is not None:
        material["normalTexture"] = {"index": builder.texture(mesh.normal_map, "normal")}

    gltf: dict[str, Any] = {
        "asset": {"version": "2.0", "generator": "foundry3d", "extras": mesh.extras},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": mesh.name}],
        "meshes": [
            {
                "name": mesh.name,
                "primitives": [
                    {"attributes": attributes, "indices": indices, "material": 0, "mode": 4}
                ],
            }
        ],
        "materials": [material],
    }
    gltf.update(builder.tables())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_join_glb(gltf, builder.blob()))
    return path


def png_bytes(image: np.ndarray) -> bytes:
    """An ``(H, W, 3)`` uint8 image as PNG bytes."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8), "RGB").save(out, format="PNG")
    return out.getvalue()


class _Builder:
    """Buffer views, accessors, images and textures of buffer 0, in writing order."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.length = 0
        self.views: list[dict] = []
        self.accessors: list[dict] = []
        self.images: list[dict] = []
        self.textures: list[dict] = []

    def view(self, payload: bytes, target: int | None = None) -> int:
        pad = -self.length % 4  # accessors need 4-byte aligned views
        if pad:
            self.chunks.append(b"\x00" * pad)
            self.length += pad
        entry = {"buffer": 0, "byteOffset": self.length, "byteLength": len(payload)}
        if target is not None:
            entry["target"] = target
        self.views.append(entry)
        self.chunks.append(payload)
        self.length += len(payload)
        return len(self.views) - 1

    def accessor(self, array: np.ndarray, component: int, target: int, bounds: bool = False) -> int:
        dtype = {_FLOAT: "<f4", _UINT16: "<u2", _UINT32: "<u4"}[component]
        data = np.ascontiguousarray(array, dtype=dtype)
        entry = {
            "bufferView": self.view(data.tobytes(), target),
            "componentType": component,
            "count": int(data.shape[0])
            * (int(data.shape[1]) if target == _ELEMENT_ARRAY_BUFFER else 1),
            "type": "SCALAR" if target == _ELEMENT_ARRAY_BUFFER else _TYPES[data.shape[1]],
        }
        if bounds:
            entry["min"] = [float(v) for v in data.min(axis=0)]
            entry["max"] = [float(v) for v in data.max(axis=0)]
        self.accessors.append(entry)
        return len(self.accessors) - 1

    def texture(self, image: np.ndarray, name: str) -> int:
        view = self.view(png_bytes(image))
        self.images.append({"bufferView": view, "mimeType": "image/png", "name": name})
        self.textures.append({"source": len(self.images) - 1, "sampler": 0})
        return len(self.textures) - 1

    def tables(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "buffers": [{"byteLength": self.length + (-self.length % 4)}],
            "bufferViews": self.views,
            "accessors": self.accessors,
        }
        if self.textures:
            out["images"] = self.images
            out["textures"] = self.textures
            out["samplers"] = [
                {
                    "magFilter": _LINEAR,
                    "minFilter": _LINEAR_MIPMAP_LINEAR,
                    "wrapS": _REPEAT,
                    "wrapT": _REPEAT,
                }
            ]
        return out

    def blob(self) -> bytes:
        data = b"".join(self.chunks)
        return data + b"\x00" * (-len(data) % 4)
