"""Writing finished assets: binary glTF (GLB), OBJ, and a labelled preview sheet PNG.

Frames: the bundle frame is already glTF's (+Y up, right-handed, front facing +Z), so meshes
are written without any axis change.

Colour spaces: foundry3d keeps vertex colours as sRGB (``mesh.visual.vertex_colors``, uint8),
like the bundle's colour row. glTF's ``COLOR_0`` is *linear*, while a ``baseColorTexture`` is
sRGB. trimesh writes and reads ``COLOR_0`` bytes verbatim (no conversion), so
:func:`export_glb` converts sRGB to linear and stores ``COLOR_0`` as float32 (8-bit linear
would band the darks), and :func:`load_glb` converts back. Textures pass through unchanged.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import trimesh

from models.colour import linear_to_srgb, srgb_to_linear

if TYPE_CHECKING:
    pass

_GLB_MAGIC = 0x46546C67  # b"glTF"
_CHUNK_JSON = 0x4E4F534A
_CHUNK_BIN = 0x004E4942
_FLOAT = 5126
_COMPONENT_DTYPES = {5121: np.uint8, 5123: np.uint16, 5126: np.float32}
_TYPE_WIDTH = {"VEC3": 3, "VEC4": 4}


# --------------------------------------------------------------------------- GLB


def export_glb(mesh: trimesh.Trimesh, path: str | Path) -> Path:
    """Write ``mesh`` (bundle frame, +Y up, front +Z) as a glTF 2.0 binary file.

    * Vertex colours (``mesh.visual.kind`` ``"vertex"`` or ``"face"``; sRGB uint8) become
      ``COLOR_0`` float32 RGBA in linear space, with a white, non-metallic material so viewers
      show the colours as they are.
    * A :class:`trimesh.visual.TextureVisuals` mesh is written with its UVs and material; its
      ``baseColorTexture`` stays sRGB (glTF's convention), and no ``COLOR_0`` is written
      because glTF would multiply it into the texture.
    * Otherwise the mesh is written with trimesh's defaults.

    Returns ``path``. The caller's mesh is not changed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    visual = mesh.visual
    if isinstance(visual, trimesh.visual.TextureVisuals):
        textured = trimesh.Trimesh(
            vertices=mesh.vertices,
            faces=mesh.faces,
            process=False,
            visual=trimesh.visual.TextureVisuals(uv=visual.uv, material=visual.material),
        )
        path.write_bytes(textured.export(file_type="glb"))
        return path
    if visual.kind not in ("vertex", "face"):
        path.write_bytes(mesh.export(file_type="glb"))
        return path

    srgb = np.asarray(visual.vertex_colors, dtype=np.float64) / 255.0  # (V, 4)
    rgba = np.concatenate([srgb_to_linear(srgb[:, :3]), srgb[:, 3:]], axis=1).astype(np.float32)
    plain = trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.faces, process=False)
    gltf, blob = _split_glb(plain.export(file_type="glb"))
    primitive = gltf["meshes"][0]["primitives"][0]
    position = gltf["accessors"][primitive["attributes"]["POSITION"]]
    if position["count"] != len(rgba):
        raise RuntimeError(
            f"trimesh wrote {position['count']} vertices for a mesh of {len(rgba)}; "
            "cannot attach COLOR_0"
        )
    blob = _append_accessor(gltf, blob, rgba, "VEC4")
    primitive["attributes"]["COLOR_0"] = len(gltf["accessors"]) - 1
    gltf.setdefault("materials", []).append(
        {
            "name": "vertex_colour",
            "pbrMetallicRoughness": {
                "baseColorFactor": [1.0, 1.0, 1.0, 1.0],
                "metallicFactor": 0.0,
                "roughnessFactor": 1.0,
            },
        }
    )
    primitive["material"] = len(gltf["materials"]) - 1
    path.write_bytes(_join_glb(gltf, blob))
    return path


def load_glb(path: str | Path) -> trimesh.Trimesh:
    """Read a GLB as one :class:`trimesh.Trimesh` with sRGB vertex colours (the inverse of
    :func:`export_glb`).

    Vertices and faces keep their order (``process=False``). ``COLOR_0`` (linear in glTF) is
    converted to sRGB uint8: read exactly from the file when it holds a single primitive (as
    :func:`export_glb` writes), otherwise from trimesh's 8-bit copy per part.
    """
    path = Path(path)
    data = path.read_bytes()
    gltf, blob = _split_glb(data)
    primitives = [p for m in gltf.get("meshes", []) for p in m.get("primitives", [])]
    scene = trimesh.load(path, file_type="glb", process=False, force="scene")
    if len(primitives) == 1 and "COLOR_0" in primitives[0].get("attributes", {}):
        mesh = _only_geometry(scene)
        srgb = _linear_rgba_to_srgb_u8(
            _read_accessor(gltf, blob, primitives[0]["attributes"]["COLOR_0"])
        )
        return _with_srgb_colours(mesh, srgb)
    for name, geom in list(scene.geometry.items()):
        linear = _loaded_colour_0(geom)
        if linear is not None:
            srgb = _linear_rgba_to_srgb_u8(linear)
            scene.geometry[name] = _with_srgb_colours(geom, srgb)
    if len(scene.geometry) == 1:
        return _only_geometry(scene)
    return scene.to_geometry()


def _loaded_colour_0(geom: trimesh.Trimesh) -> np.ndarray | None:
    """The linear RGBA ``(V, 4)`` float64 in [0, 1] of trimesh's verbatim copy of a
    primitive's ``COLOR_0`` (integers or floats, as the file stored them), or None."""
    visual = geom.visual
    if isinstance(visual, trimesh.visual.TextureVisuals):
        if "color" not in visual.vertex_attributes:
            return None
        raw = np.asarray(visual.vertex_attributes["color"])
    elif visual.kind == "vertex":
        raw = np.asarray(visual.vertex_colors)
    else:
        return None
    if np.issubdtype(raw.dtype, np.integer):
        return raw.astype(np.float64) / np.iinfo(raw.dtype).max
    return raw.astype(np.float64)


def _with_srgb_colours(mesh: trimesh.Trimesh, srgb: np.ndarray) -> trimesh.Trimesh:
    """``mesh`` with sRGB uint8 RGBA vertex colours; a real texture is kept, colours beside it."""
    visual = mesh.visual
    material = getattr(visual, "material", None)
    if getattr(material, "baseColorTexture", None) is not None or getattr(material, "image", None):
        visual.vertex_attributes["color"] = srgb
        return mesh
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=srgb)
    return mesh


def export_obj(mesh: trimesh.Trimesh, path: str | Path) -> Path:
    """Write ``mesh`` as Wavefront OBJ; a texture goes beside it (``.mtl`` + image).

    Vertex colours are written as sRGB ``v x y z r g b`` (a common extension that has no
    colour-space convention; sRGB is what viewers assume). Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    trimesh.exchange.export.export_mesh(mesh, path, file_type="obj")
    return path


def _only_geometry(scene: trimesh.Scene) -> trimesh.Trimesh:
    (geom,) = scene.geometry.values()
    # Apply the node transform (identity for our own files) so the frame is the file's world.
    node = scene.graph.geometry_nodes[next(iter(scene.geometry))][0]
    transform, _ = scene.graph[node]
    if not np.allclose(transform, np.eye(4)):
        geom = geom.copy()
        geom.apply_transform(transform)
    return geom


def _linear_rgba_to_srgb_u8(linear: np.ndarray) -> np.ndarray:
    linear = np.asarray(linear, dtype=np.float64)
    if linear.shape[1] == 3:
        linear = np.concatenate([linear, np.ones((len(linear), 1))], axis=1)
    srgb = np.concatenate([linear_to_srgb(linear[:, :3]), np.clip(linear[:, 3:], 0, 1)], axis=1)
    return np.round(srgb * 255.0).astype(np.uint8)


def _split_glb(data: bytes) -> tuple[dict, bytes]:
    """GLB bytes -> (glTF JSON dict, binary chunk bytes)."""
    magic, version, length = struct.unpack_from("<III", data, 0)
    if magic != _GLB_MAGIC or version != 2:
        raise ValueError("not a glTF 2.0 binary file")
    offset, gltf, blob = 12, None, b""
    while offset < length:
        chunk_len, chunk_type = struct.unpack_from("<II", data, offset)
        chunk = data[offset + 8 : offset + 8 + chunk_len]
        if chunk_type == _CHUNK_JSON:
            gltf = json.loads(chunk.decode("utf-8"))
        elif chunk_type == _CHUNK_BIN:
            blob = bytes(chunk)
        offset += 8 + chunk_len
    if gltf is None:
        raise ValueError("GLB without a JSON chunk")
    return gltf, blob


def _join_glb(gltf: dict, blob: bytes) -> bytes:
    """(glTF JSON dict, binary chunk) -> GLB bytes, chunks padded to 4 bytes as required."""
    text = json.dumps(gltf, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 4)
    blob += b"\x00" * (-len(blob) % 4)
    total = 12 + 8 + len(text) + (8 + len(blob) if blob else 0)
    out = struct.pack("<III", _GLB_MAGIC, 2, total) + struct.pack("<II", len(text), _CHUNK_JSON)
    out += text
    if blob:
        out += struct.pack("<II", len(blob), _CHUNK_BIN) + blob
    return out


def _append_accessor(gltf: dict, blob: bytes, array: np.ndarray, kind: str) -> bytes:
    """Append a float32 ``(N, k)`` vertex attribute to buffer 0; returns the new blob."""
    blob += b"\x00" * (-len(blob) % 4)
    payload = np.ascontiguousarray(array, dtype="<f4").tobytes()
    gltf.setdefault("bufferViews", []).append(
        {"buffer": 0, "byteOffset": len(blob), "byteLength": len(payload), "target": 34962}
    )
    gltf.setdefault("accessors", []).append(
        {
            "bufferView": len(gltf["bufferViews"]) - 1,
            "componentType": _FLOAT,
            "count": int(len(array)),
            "type": kind,
            "min": [float(v) for v in array.min(axis=0)],
            "max": [float(v) for v in array.max(axis=0)],
        }
    )
    blob += payload
    buffers = gltf.setdefault("buffers", [{}])
    buffers[0]["byteLength"] = len(blob)
    return blob


def _read_accessor(gltf: dict, blob: bytes, index: int) -> np.ndarray:
    """A VEC3/VEC4 accessor of buffer 0 as float64 ``(N, k)`` (normalised integers -> [0, 1])."""
    acc = gltf["accessors"][index]
    view = gltf["bufferViews"][acc["bufferView"]]
    dtype = np.dtype(_COMPONENT_DTYPES[acc["componentType"]]).newbyteorder("<")
    width = _TYPE_WIDTH[acc["type"]]
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    stride = view.get("byteStride", dtype.itemsize * width)
    rows = np.ndarray(
        shape=(acc["count"], width),
        dtype=dtype,
        buffer=blob,
        offset=start,
        strides=(stride, dtype.itemsize),
    ).astype(np.float64)
    if acc["componentType"] != _FLOAT:
        rows /= np.iinfo(dtype).max
    return rows


# --------------------------------------------------------------------------- preview sheet


