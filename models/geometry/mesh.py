"""Mesh loading and preparation for rendering: flattening scenes, axis changes, normalisation,
crease-aware shading normals.

Frames: a *source* mesh is in its file's frame (``up`` = "y" or "z"); :func:`to_y_up` turns a
z-up source into y-up by ``(x, y, z) -> (x, z, -y)``; :func:`normalise_mesh` then maps it into
the bundle frame (+Y up, front +Z, bounding box centred, longest side 1.8) as BUNDLE_SPEC.md
says: ``bundle_xyz = (source_yup - offset) * scale``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

from models.bundle.spec import NORMALISED_EXTENT
from models.geometry.normals import face_normals_and_areas

#: Faces meeting at more than this dihedral angle (degrees) keep their own shading normals.
CREASE_ANGLE_DEG = 30.0

#: z-up -> y-up: (x, y, z) -> (x, z, -y), a rotation of -90 degrees about +X.
Z_UP_TO_Y_UP = np.array(
    [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)


class MeshLoadError(ValueError):
    """A file that does not hold a triangle mesh trimesh can read."""


def load_mesh(path: str | Path) -> trimesh.Trimesh:
    """Read OBJ/GLB/GLTF/STL/PLY/OFF... into one ``trimesh.Trimesh`` in the file's frame.

    Duplicate vertices are merged (except across UV seams). Multi-part scenes are flattened
    with each node's transform applied; per-part materials survive: textured parts keep their
    textures (trimesh packs several into one atlas), and when textured and untextured parts
    are mixed, every part is turned into vertex colours (textures sampled at the vertices).
    Point clouds and empty files raise :class:`MeshLoadError`.
    """
    path = Path(path)
    if path.suffix.lower() == ".glb" and _glb_colours_only(path):
        # glTF COLOR_0 is linear; trimesh keeps it verbatim as a vertex attribute and would
        # render the material instead: read it as sRGB vertex colours
        from models.geometry.glb import load_glb

        mesh = load_glb(path)
        mesh.merge_vertices()
        return mesh
    try:
        # trimesh's processing merges duplicate vertices (an STL is a triangle soup) but keeps
        # vertices apart where their UVs differ, so textures survive
        loaded = trimesh.load(path, process=True)
    except Exception as exc:  # trimesh raises many types for unreadable files
        raise MeshLoadError(f"cannot read mesh {path}: {exc}") from exc
    if isinstance(loaded, trimesh.Scene):
        mesh = flatten_scene(loaded)
    else:
        mesh = loaded
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise MeshLoadError(f"{path} holds no triangles ({type(mesh).__name__})")
    return mesh


def _glb_colours_only(path: Path) -> bool:
    """True for a GLB whose primitives carry ``COLOR_0`` and whose materials have no texture."""
    import json
    import struct

    try:
        with path.open("rb") as f:
            magic, _, _ = struct.unpack("<4sII", f.read(12))
            length, kind = struct.unpack("<I4s", f.read(8))
            if magic != b"glTF" or kind != b"JSON":
                return False
            gltf = json.loads(f.read(length))
    except (OSError, struct.error, ValueError):
        return False
    primitives = [p for m in gltf.get("meshes", []) for p in m.get("primitives", [])]
    return bool(primitives) and not gltf.get("textures") and all(
        "COLOR_0" in p.get("attributes", {}) for p in primitives
    )


def flatten_scene(scene: trimesh.Scene) -> trimesh.Trimesh:
    """All triangle meshes of ``scene``, transformed into its base frame, as one mesh."""
    parts: list[trimesh.Trimesh] = []
    for node in scene.graph.nodes_geometry:
        transform, name = scene.graph[node]
        geom = scene.geometry[name]
        if not isinstance(geom, trimesh.Trimesh) or len(geom.faces) == 0:
            continue
        part = geom.copy()
        part.apply_transform(transform)
        parts.append(part)
    if not parts:
        raise MeshLoadError("the scene holds no triangle meshes")
    if len(parts) == 1:
        return parts[0]
    if all(_visual_kind(p) == "texture" for p in parts):
        return _concatenate_textured(parts)
    # Mixed textured / coloured parts cannot share one visual: bake textures to vertex colours
    # so every part keeps its look (at vertex resolution).
    for p in parts:
        p.visual = trimesh.visual.ColorVisuals(p, vertex_colors=part_vertex_colours(p))
    return trimesh.util.concatenate(parts)


#: Texels of edge padding around each part's image in a packed atlas (stops bilinear bleeding).
ATLAS_PAD = 2


def _concatenate_textured(parts: list[trimesh.Trimesh]) -> trimesh.Trimesh:
    """One textured mesh from textured parts: their images stacked into one atlas (each part's
    baseColorFactor baked into its texels), UVs remapped into the part's band.

    trimesh's own material packing is not used: it mismatched images and UVs in testing.
    UVs outside [0, 1] (repeating textures) are wrapped per vertex, which is exact unless a
    face straddles a repeat boundary.
    """
    from PIL import Image

    from models.geometry.materials import apply_factor, linear_material

    images, uvs = [], []
    for p in parts:
        material = p.visual.material
        rgb = np.asarray(_material_image(material).convert("RGB"), dtype=np.float64)
        base = getattr(material, "baseColorFactor", None)
        if base is not None:
            rgb = apply_factor(rgb.reshape(-1, 3), linear_material(base)).reshape(rgb.shape)
        pad = ((ATLAS_PAD, ATLAS_PAD), (ATLAS_PAD, ATLAS_PAD), (0, 0))
        images.append(np.pad(np.round(rgb), pad, mode="edge"))
        uv = np.asarray(p.visual.uv, dtype=np.float64)
        if uv.min() < 0.0 or uv.max() > 1.0:
            uv = np.mod(uv, 1.0)
        uvs.append(uv)
    width = max(im.shape[1] for im in images)
    height = sum(im.shape[0] for im in images)
    atlas = np.full((height, width, 3), 255.0)
    top = 0
    for k, im in enumerate(images):
        h, w = im.shape[:2]
        atlas[top : top + h, :w] = im
        inner_h, inner_w = h - 2 * ATLAS_PAD, w - 2 * ATLAS_PAD
        u, v = uvs[k][:, 0], uvs[k][:, 1]
        # texel coordinates inside the padding, rows counted from the atlas top
        x = ATLAS_PAD + u * inner_w
        y = top + ATLAS_PAD + (1.0 - v) * inner_h
        uvs[k] = np.stack([x / width, 1.0 - y / height], axis=1)
        top += h
    material = trimesh.visual.material.PBRMaterial(
        baseColorTexture=Image.fromarray(atlas.astype(np.uint8))
    )
    vertices = np.concatenate([np.asarray(p.vertices) for p in parts])
    offsets = np.cumsum([0] + [len(p.vertices) for p in parts[:-1]])
    faces = np.concatenate([np.asarray(p.faces) + o for p, o in zip(parts, offsets, strict=True)])
    visual = trimesh.visual.TextureVisuals(uv=np.concatenate(uvs), material=material)
    return trimesh.Trimesh(vertices, faces, visual=visual, process=False)


def _visual_kind(mesh: trimesh.Trimesh) -> str:
    """ "texture" (UVs and an image), "material" (flat material colour), "vertex", "face" or
    "none"."""
    visual = mesh.visual
    if isinstance(visual, trimesh.visual.TextureVisuals):
        uv = getattr(visual, "uv", None)
        has_image = _material_image(visual.material) is not None
        if uv is not None and len(uv) == len(mesh.vertices) and has_image:
            return "texture"
        return "material"
    return str(visual.kind or "none")


def part_vertex_colours(mesh: trimesh.Trimesh) -> np.ndarray:
    """``(V, 4)`` uint8 sRGB colours standing for the mesh's look (texture sampled at UVs,
    material colour, face or vertex colours; untextured grey otherwise)."""
    from models.geometry.materials import (
        UNTEXTURED_RGB,
        apply_factor,
        linear_material,
        material_colour,
        sample_texture,
    )


    visual = mesh.visual
    n = len(mesh.vertices)
    if isinstance(visual, trimesh.visual.TextureVisuals):
        uv = getattr(visual, "uv", None)
        image = _material_image(visual.material)
        if uv is not None and image is not None and len(uv) == n:
            rgb = sample_texture(np.asarray(image.convert("RGB")), np.asarray(uv, dtype=np.float64))
            base = getattr(visual.material, "baseColorFactor", None)
            rgb = apply_factor(rgb, linear_material(base) if base is not None else None)
            return np.concatenate([np.round(rgb), np.full((n, 1), 255)], 1).astype(np.uint8)
        rgb = material_colour(visual.material, default=UNTEXTURED_RGB)
        return np.tile(np.r_[rgb, 255].astype(np.uint8), (n, 1))
    if visual.kind in ("vertex", "face"):
        return np.asarray(visual.vertex_colors, dtype=np.uint8)
    return np.tile(np.r_[UNTEXTURED_RGB, 255].astype(np.uint8), (n, 1))


def _material_image(material) -> object | None:
    image = getattr(material, "baseColorTexture", None)
    if image is None:
        image = getattr(material, "image", None)
    return image


def to_y_up(mesh: trimesh.Trimesh, up: str = "y") -> trimesh.Trimesh:
    """A copy of ``mesh`` turned y-up: ``up="z"`` maps ``(x, y, z) -> (x, z, -y)``."""
    if up not in ("y", "z"):
        raise ValueError(f"up must be 'y' or 'z', got {up!r}")
    out = mesh.copy()
    if up == "z":
        out.apply_transform(Z_UP_TO_Y_UP)
    return out


def normalise_mesh(
    mesh: trimesh.Trimesh, up: str = "y"
) -> tuple[trimesh.Trimesh, float, tuple[float, float, float]]:
    """Move a source mesh into the bundle frame; returns ``(mesh, scale, offset)``.

    The source is first turned y-up (:func:`to_y_up`); ``offset`` is the centre of its
    axis-aligned bounding box (y-up source frame) and ``scale`` makes the longest side 1.8:
    ``bundle_xyz = (source_yup - offset) * scale``. The input is not modified.
    """
    out = to_y_up(mesh, up)
    lo, hi = np.asarray(out.bounds, dtype=np.float64)
    extent = float(np.max(hi - lo))
    if not np.isfinite(extent) or extent <= 0:
        raise ValueError(f"cannot normalise a mesh with bounding box {lo} .. {hi}")
    offset = (lo + hi) / 2.0
    scale = NORMALISED_EXTENT / extent
    out.vertices = (np.asarray(out.vertices, dtype=np.float64) - offset) * scale
    return out, scale, (float(offset[0]), float(offset[1]), float(offset[2]))


#: Vertices closer than this fraction of the bounding-box diagonal count as one position.
WELD_TOLERANCE = 1e-7


def weld_positions(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """``faces`` re-indexed so that vertices at the same position (within
    ``WELD_TOLERANCE`` of the bounding-box diagonal) share one index (the first such vertex);
    ``(F, 3)`` int64 into the same ``vertices``."""
    v = np.asarray(vertices, dtype=np.float64)
    if len(v) == 0:
        return np.asarray(faces, dtype=np.int64)
    diag = float(np.linalg.norm(v.max(0) - v.min(0))) or 1.0
    q = np.round((v - v.min(0)) / (diag * WELD_TOLERANCE)).astype(np.int64)
    _, first, inverse = np.unique(q, axis=0, return_index=True, return_inverse=True)
    representative = first[inverse.reshape(-1)]  # each vertex -> first vertex at its position
    return representative[np.asarray(faces, dtype=np.int64)]


def crease_normals(
    vertices: np.ndarray, faces: np.ndarray, angle_deg: float = CREASE_ANGLE_DEG
) -> np.ndarray:
    """Crease-aware shading normals per face corner: ``(F, 3, 3)`` float32 unit vectors.

    ``vertices`` ``(V, 3)``, ``faces`` ``(F, 3)``; the result is in the vertices' frame.
    Around each vertex the fan of faces is cut at every edge whose two faces meet at more
    than ``angle_deg`` (and at boundary or non-manifold edges); each piece of the fan shares
    one normal, the corner-angle-weighted mean of its face normals. So the surface is smooth
    across gentle edges and sharp at creases. Zero-area faces (never drawn) get +Z.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    v = np.asarray(vertices, dtype=np.float64)
    # Topology by position: files often split vertices at UV seams or store triangle soups
    # (STL), which must not read as creases.
    f = weld_positions(v, np.asarray(faces, dtype=np.int64))
    nf = len(f)
    tri = v[f]  # (F, 3, 3)
    face_n, areas = face_normals_and_areas(v, f)
    area = areas[:, None]  # (F, 1); zero exactly for the zero-area faces
    # corner angles as weights
    weights = np.zeros((nf, 3))
    for k in range(3):
        a = tri[:, (k + 1) % 3] - tri[:, k]
        b = tri[:, (k + 2) % 3] - tri[:, k]
        na = np.linalg.norm(a, axis=1)
        nb = np.linalg.norm(b, axis=1)
        cos = np.einsum("ij,ij->i", a, b) / np.maximum(na * nb, 1e-30)
        weights[:, k] = np.arccos(np.clip(cos, -1.0, 1.0))
    weights[area[:, 0] == 0] = 0.0

    # Join corners (v, f) and (v, g) when faces f and g share an edge through v at a smooth
    # dihedral angle. Half-edge (f, k) runs from corner k to corner k+1.
    a = f.reshape(-1)
    b = f[:, [1, 2, 0]].reshape(-1)
    key = np.minimum(a, b) * (len(v) + 1) + np.maximum(a, b)
    order = np.argsort(key, kind="stable")
    ks = key[order]
    start = np.r_[True, ks[1:] != ks[:-1]]
    run = np.cumsum(start) - 1
    count = np.bincount(run)
    pair_first = np.nonzero(start & (count[run] == 2))[0]
    h1, h2 = order[pair_first], order[pair_first + 1]  # two half-edges of one manifold edge
    f1, f2 = h1 // 3, h2 // 3
    cos_limit = np.cos(np.radians(angle_deg))
    smooth = np.einsum("ij,ij->i", face_n[f1], face_n[f2]) >= cos_limit - 1e-12
    smooth &= (area[f1, 0] > 0) & (area[f2, 0] > 0)
    h1, h2, f1, f2 = h1[smooth], h2[smooth], f1[smooth], f2[smooth]
    # half-edge h has corners (h % 3) and (h % 3 + 1) % 3 of its face; match them by vertex
    c1a, c1b = h1 % 3, (h1 % 3 + 1) % 3
    c2a, c2b = h2 % 3, (h2 % 3 + 1) % 3
    same = f[f1, c1a] == f[f2, c2a]  # same direction (inconsistent winding) or opposite
    other_a = np.where(same, c2a, c2b)
    other_b = np.where(same, c2b, c2a)
    rows = np.concatenate([f1 * 3 + c1a, f1 * 3 + c1b])
    cols = np.concatenate([f2 * 3 + other_a, f2 * 3 + other_b])
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(3 * nf, 3 * nf))
    _, label = connected_components(graph, directed=False)

    # Faces with inconsistent winding have opposite signed normals, fail the dot test above and
    # stay in separate groups; rendering is double-sided, so each still shades correctly.
    contrib = (face_n[:, None, :] * weights[:, :, None]).reshape(-1, 3)
    sums = np.zeros((label.max() + 1, 3))
    np.add.at(sums, label, contrib)
    corner = sums[label].reshape(nf, 3, 3)
    norm = np.linalg.norm(corner, axis=2, keepdims=True)
    fallback = np.where(area > 0, face_n, np.array([0.0, 0.0, 1.0]))[:, None, :]
    corner = np.where(norm > 1e-12, corner / np.maximum(norm, 1e-30), fallback)
    return corner.astype(np.float32)
