"""Texture baking: a UV atlas (xatlas) per LOD, its base colour from the bundle's colour views,
its tangent-space normal map from the full-resolution mesh or the bundle's normal maps.

Frames and conventions: meshes are in the bundle frame (+Y up, front +Z). UVs follow glTF
(origin at the image's top-left, ``v`` down), so texel row ``r`` spans ``v`` in
``[r/S, (r+1)/S]``. Colours are sRGB like the bundle. Tangent frames follow glTF: ``T`` along
increasing ``u``, bitangent ``B = w * cross(N, T)`` along *decreasing* ``v`` (up the image), and
a normal map stores ``(n.T, n.B, n.N)`` encoded as ``(x + 1) / 2``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from models.bundle.spec import Bundle

if TYPE_CHECKING:
    import trimesh

    from models.raster.base import Rasteriser
    from models.reconstruct.texture import ViewImages, _ViewSampler

#: Empty texels xatlas leaves between UV charts (at the atlas's own resolution).
ATLAS_PADDING_PX = 2
#: xatlas's chart-growing refinement iterations (its default: 1). Without them a 20,000-face
#: ball or torus unwraps in 1.2-1.5 s of CPU instead of 1.8-2.0 s, with as many charts and as
#: much of the atlas used (capping the chart size was as fast on a ball but packed a torus into
#: 38 % of the atlas instead of 57 %).
CHART_ITERATIONS = 0
#: Candidate triangles of the full mesh tested per texel when transferring its normals.
NORMAL_CANDIDATES = 8


@dataclass(frozen=True)
class UVMesh:
    """A mesh cut along UV seams, ready for a texture.

    ``vertices`` ``(V, 3)`` float64 bundle frame; ``faces`` ``(F, 3)`` int64; ``uv`` ``(V, 2)``
    float64 glTF convention (top-left origin, v down); ``normals`` ``(V, 3)`` float64 unit smooth
    normals (equal on both sides of a seam); ``tangents`` ``(V, 4)`` float64 glTF tangents
    (unit xyz, w = +-1); ``source`` ``(V,)`` int64: the vertex of the uncut mesh each came from.
    """

    vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    normals: np.ndarray
    tangents: np.ndarray
    source: np.ndarray


@dataclass(frozen=True)
class Texels:
    """The texels a UV atlas covers at one resolution: flat indices ``(P,)`` into an
    ``S x S`` image, the face ``(P,)`` and barycentrics ``(P, 3)`` of each, and its surface
    point ``(P, 3)`` and interpolated unit normal ``(P, 3)`` (bundle frame)."""

    size: int
    index: np.ndarray
    face: np.ndarray
    bary: np.ndarray
    points: np.ndarray
    normals: np.ndarray


def bake_texture(
    mesh: trimesh.Trimesh,
    bundle: Bundle,
    size: int = 1024,
    *,
    view_weights: tuple[float, ...] | list[float] | None = None,
    erosion_px: int | None = None,
    rasteriser: Rasteriser | None = None,
) -> trimesh.Trimesh:
    """A copy of ``mesh`` with a UV atlas (xatlas) and a baked ``size`` x ``size`` texture.

    The baker of the export stage's LODs on its own: each texel is projected like a vertex in
    :func:`models.reconstruct.texture.project_colours`; texels no view sees take the
    projected vertex colours (propagated over the surface) interpolated across their triangle;
    the gutters are filled by push-pull. Vertices are split along UV seams.

    Returns a :class:`trimesh.Trimesh` whose visual is a
    :class:`trimesh.visual.TextureVisuals` with ``uv`` ``(V', 2)`` (origin bottom-left, v up,
    trimesh's convention) and a :class:`trimesh.visual.material.PBRMaterial` whose
    ``baseColorTexture`` is an sRGB RGB ``PIL.Image``.
    """
    import trimesh
    from PIL import Image

    from models.reconstruct.texture import project_colours

    coloured = project_colours(
        bundle, mesh, view_weights=view_weights, erosion_px=erosion_px, rasteriser=rasteriser
    )
    colours = np.asarray(coloured.visual.vertex_colors[:, :3], dtype=np.float64) / 255.0
    uvm = unwrap(mesh.vertices, mesh.faces, size)
    image = bake_base_colour(
        uvm,
        texels(uvm, size),
        bundle,
        vertex_colours=colours,
        view_weights=view_weights,
        erosion_px=erosion_px,
        rasteriser=rasteriser,
    )
    out = trimesh.Trimesh(vertices=uvm.vertices, faces=uvm.faces, process=False)
    material = trimesh.visual.material.PBRMaterial(
        name="baked",
        baseColorTexture=Image.fromarray(image, "RGB"),
        metallicFactor=0.0,
        roughnessFactor=1.0,
    )
    uv = np.stack([uvm.uv[:, 0], 1.0 - uvm.uv[:, 1]], axis=1)  # glTF's top-left -> trimesh's
    out.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    return out


def unwrap(vertices: np.ndarray, faces: np.ndarray, size: int) -> UVMesh:
    """Cut ``(V, 3)`` / ``(F, 3)`` into UV charts and pack them for an ``size``-texel texture."""
    try:
        import xatlas
    except ImportError as exc:  # pragma: no cover - xatlas is a project dependency
        raise ImportError("texture baking needs xatlas: pip install xatlas") from exc
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    atlas = xatlas.Atlas()
    atlas.add_mesh(vertices.astype(np.float32), faces.astype(np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = int(size)
    pack.padding = ATLAS_PADDING_PX  # texels between charts, so bilinear lookups stay in one
    charts = xatlas.ChartOptions()
    charts.max_iterations = CHART_ITERATIONS
    atlas.generate(charts, pack)
    source, uv_faces, uv = atlas[0]
    source = source.astype(np.int64)
    uv_faces = uv_faces.astype(np.int64)
    # xatlas's uv is relative to its (near-square) atlas with v counted from row 0: the glTF
    # convention already.
    uv = np.asarray(uv, dtype=np.float64)
    smooth = seam_normals(vertices, faces, uv_faces, len(source))
    out_vertices = vertices[source]
    return UVMesh(
        vertices=out_vertices,
        faces=uv_faces,
        uv=uv,
        normals=smooth,
        tangents=tangent_frames(out_vertices, uv_faces, uv, smooth),
        source=source,
    )


def seam_normals(
    vertices: np.ndarray, faces: np.ndarray, cut_faces: np.ndarray, n_cut: int
) -> np.ndarray:
    """Unit normals ``(n_cut, 3)`` of the vertices of a UV-cut mesh (``cut_faces``, face for
    face the same triangles as ``faces``): the crease-aware normals of the uncut mesh
    (:func:`models.geometry.mesh.crease_normals`) averaged per cut vertex, so an edge sharper
    than the crease angle stays hard wherever the atlas cut it (xatlas cuts at hard edges)."""
    from models.geometry.mesh import crease_normals

    corners = crease_normals(vertices, faces).astype(np.float64).reshape(-1, 3)
    sums = np.zeros((n_cut, 3))
    np.add.at(sums, np.asarray(cut_faces).reshape(-1), corners)
    return _unit(sums, fallback=np.array([0.0, 1.0, 0.0]))


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted smooth unit normals ``(V, 3)`` float64 (+Y for isolated vertices)."""
    tri = vertices[faces]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # length = 2 x area
    sums = np.zeros_like(vertices, dtype=np.float64)
    for k in range(3):
        np.add.at(sums, faces[:, k], cross)
    return _unit(sums, fallback=np.array([0.0, 1.0, 0.0]))


def tangent_frames(
    vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, normals: np.ndarray
) -> np.ndarray:
    """glTF ``TANGENT`` ``(V, 4)`` float64: per-vertex sums of face tangents (d position /
    d u) made orthogonal to the normal, ``w`` the handedness of the UV mapping (+1 where the
    bitangent ``cross(N, T)`` runs up the image). Faces degenerate in UV contribute nothing;
    a vertex without any gets a unit vector perpendicular to its normal."""
    tri = vertices[faces]
    tuv = uv[faces]
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    # Up the image is -v in glTF's convention: use (u, -v) so the bitangent is d p / d(-v).
    du1, dv1 = tuv[:, 1, 0] - tuv[:, 0, 0], -(tuv[:, 1, 1] - tuv[:, 0, 1])
    du2, dv2 = tuv[:, 2, 0] - tuv[:, 0, 0], -(tuv[:, 2, 1] - tuv[:, 0, 1])
    det = du1 * dv2 - du2 * dv1
    ok = np.abs(det) > 1e-20
    r = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)[:, None]
    t_face = (e1 * dv2[:, None] - e2 * dv1[:, None]) * r
    b_face = (e2 * du1[:, None] - e1 * du2[:, None]) * r
    t_sum = np.zeros_like(vertices)
    b_sum = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(t_sum, faces[:, k], t_face)
        np.add.at(b_sum, faces[:, k], b_face)
    n = normals
    t = t_sum - n * np.einsum("ij,ij->i", n, t_sum)[:, None]
    # A vertex with no usable UV gradient: any unit vector perpendicular to its normal.
    helper = np.where(np.abs(n[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
    perpendicular = _unit(np.cross(n, helper), fallback=np.array([1.0, 0.0, 0.0]))
    length = np.linalg.norm(t, axis=1, keepdims=True)
    t = np.where(length > 1e-12, t / np.maximum(length, 1e-30), perpendicular)
    w = np.where(np.einsum("ij,ij->i", np.cross(n, t), b_sum) < 0.0, -1.0, 1.0)
    return np.concatenate([t, w[:, None]], axis=1)


def texels(mesh: UVMesh, size: int) -> Texels:
    """The texels ``mesh``'s atlas covers at ``size`` x ``size``, with their surface points and
    normals (rasterised in texture space by :func:`models.export._kernels.uv_texels`)."""
    from models.export import _kernels

    index, face, bary, points, normals = _kernels.uv_texels(
        np.ascontiguousarray(mesh.uv, dtype=np.float64),
        np.ascontiguousarray(mesh.faces, dtype=np.int64),
        np.ascontiguousarray(mesh.vertices, dtype=np.float64),
        np.ascontiguousarray(mesh.normals, dtype=np.float64),
        int(size),
    )
    return Texels(size=size, index=index, face=face, bary=bary, points=points, normals=normals)


def bake_base_colour(
    mesh: UVMesh,
    cover: Texels,
    bundle: Bundle,
    *,
    vertex_colours: np.ndarray,
    view_weights: tuple[float, ...] | list[float] | None = None,
    erosion_px: int | None = None,
    rasteriser: Rasteriser | None = None,
    sampler: _ViewSampler | None = None,
) -> np.ndarray:
    """The ``(S, S, 3)`` uint8 sRGB base colour of ``mesh`` seen through ``bundle``'s colour row:
    :func:`project_base_colour`, then the gutters filled by :func:`fill_gutters`."""
    return fill_gutters(
        cover,
        project_base_colour(
            mesh,
            cover,
            sampler or view_sampler(bundle, mesh, erosion_px, view_weights, rasteriser),
            vertex_colours,
        ),
    )


def project_base_colour(
    mesh: UVMesh, cover: Texels, sampler: _ViewSampler, vertex_colours: np.ndarray
) -> np.ndarray:
    """sRGB base colour ``(P, 3)`` float64 in [0, 1] of ``cover``'s texels.

    Every texel takes the view-weighted mean of the colour views that see it (visibility and
    weights as :func:`models.reconstruct.texture.project_colours`). A texel no view sees takes
    ``vertex_colours`` ``(V0, 3)`` (sRGB in [0, 1], indexed by ``mesh.source``, already
    propagated over the mesh surface into unseen regions) interpolated across its face.
    """
    colours, seen = _project(sampler, cover, sampler.colours)
    unseen = np.flatnonzero(~seen)  # only those: millions of texels
    colours[unseen] = _blend(
        cover.bary[unseen],
        np.asarray(vertex_colours, dtype=np.float64)[mesh.source],
        mesh.faces[cover.face[unseen]],
    )
    return colours


def bake_normal_map(
    mesh: UVMesh,
    cover: Texels,
    *,
    detail: tuple[np.ndarray, np.ndarray] | None = None,
    bundle: Bundle | None = None,
    rasteriser: Rasteriser | None = None,
    sampler: _ViewSampler | None = None,
) -> np.ndarray:
    """A tangent-space normal map ``(S, S, 3)`` uint8 of ``mesh`` (glTF encoding).

    Exactly one source: ``detail`` ``(vertices (V, 3), faces (F, 3))``, the full-resolution
    mesh in the same frame, whose smooth normal at each texel's closest point is taken; or
    ``bundle`` (or a ``sampler`` of it), whose normal maps are projected onto the texels like
    the colours (texels no view sees keep the mesh's own normal, ``(0, 0, 1)`` in tangent
    space). See :func:`project_normals`; the gutters are filled by :func:`fill_gutters`.
    """
    if (detail is None) == (bundle is None and sampler is None):
        raise ValueError("bake_normal_map needs exactly one of detail= or bundle=")
    if detail is None and sampler is None:
        sampler = view_sampler(bundle, mesh, None, None, rasteriser)
    return fill_gutters(cover, project_normals(mesh, cover, detail=detail, sampler=sampler))


def project_normals(
    mesh: UVMesh,
    cover: Texels,
    *,
    detail: tuple[np.ndarray, np.ndarray] | None = None,
    sampler: _ViewSampler | None = None,
) -> np.ndarray:
    """Tangent-space normals of ``cover``'s texels encoded as ``(x + 1) / 2``: ``(P, 3)``
    float64 in [0, 1], from ``detail`` (closest point of the full mesh) or from the bundle
    views of ``sampler``."""
    if detail is not None:
        world = _closest_normals(cover.points, *detail)
    else:
        projected, seen = _project(sampler, cover, sampler.images.world_normals())
        world = np.where(seen[:, None], _unit(projected, cover.normals), cover.normals)
    return (to_tangent_space(mesh, cover, world) + 1.0) / 2.0


def fill_gutters(cover: Texels, values: np.ndarray) -> np.ndarray:
    """Per-texel values ``(P, C)`` in [0, 1] -> an ``(S, S, C)`` uint8 image whose empty
    texels (gutters between charts) are filled by push-pull (see :func:`push_pull`)."""
    from models.export import _kernels

    s = cover.size
    image = _kernels.push_pull_u8(
        cover.index, np.ascontiguousarray(values, dtype=np.float64), s, s
    )
    return image.reshape(s, s, -1)


def to_tangent_space(mesh: UVMesh, cover: Texels, world: np.ndarray) -> np.ndarray:
    """World (bundle-frame) unit normals ``(P, 3)`` at ``cover``'s texels -> tangent space
    ``(P, 3)`` in the frame a glTF viewer rebuilds from the interpolated ``NORMAL`` and
    ``TANGENT`` (:func:`models.export._kernels.tangent_space`; a texel facing away from its
    own surface is an artefact of the transfer and keeps the surface)."""
    from models.export import _kernels

    return _kernels.tangent_space(
        np.ascontiguousarray(world, dtype=np.float64),
        cover.face,
        cover.bary,
        np.ascontiguousarray(cover.normals, dtype=np.float64),
        np.ascontiguousarray(mesh.faces, dtype=np.int64),
        np.ascontiguousarray(mesh.tangents, dtype=np.float64),
    )


def push_pull(image: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """Fill the unfilled texels of ``image`` ``(S, S, C)`` from the filled ones ``(S, S)``
    bool: pull (average filled texels down a 2x pyramid), then push (each level's holes take
    the coarser level's value). Filled texels are kept exactly; the gutters take a smooth
    continuation of the charts around them, so mip-mapping does not bleed a flat colour.
    Returns ``(S, S, C)`` float64 (:func:`models.export._kernels.push_pull`)."""
    from models.export import _kernels

    h, w, c = image.shape
    index = np.flatnonzero(np.asarray(filled, dtype=bool).reshape(-1))
    values = np.ascontiguousarray(np.asarray(image, dtype=np.float64).reshape(-1, c)[index])
    return _kernels.push_pull(index, values, h, w).reshape(h, w, c)


def view_sampler(
    bundle: Bundle,
    mesh: UVMesh,
    erosion_px: int | None,
    view_weights: tuple[float, ...] | list[float] | None,
    rasteriser: Rasteriser | None,
    images: ViewImages | None = None,
) -> _ViewSampler:
    """The bundle's views rasterised with ``mesh`` for visibility (see
    :mod:`models.reconstruct.texture`); ``images``: the bundle's prepared views, shared
    between meshes (default: prepared here)."""
    from models.reconstruct.texture import _ViewSampler

    return _ViewSampler(
        bundle, mesh.vertices, mesh.faces, view_weights, erosion_px, rasteriser, images
    )


# --------------------------------------------------------------------------- internals


def _project(sampler, cover: Texels, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-texel weighted means ``(P, C)`` of per-view images ``(N, T, T, C)`` and a seen flag."""
    from models.export import _kernels
    from models.reconstruct.texture import DEPTH_TOLERANCE, MAX_SLOPE

    cams = sampler.cameras
    pixel_angle = 2.0 / (cams.projection[1, 1] * sampler.tile)
    values, total = _kernels.project_views(
        np.ascontiguousarray(cover.points),
        np.ascontiguousarray(cover.normals),
        np.ascontiguousarray(cams.mvp, dtype=np.float64),
        np.ascontiguousarray(cams.eyes, dtype=np.float64),
        np.ascontiguousarray(sampler.view_weights, dtype=np.float64),
        np.ascontiguousarray(sampler.masks),
        np.ascontiguousarray(sampler.depth, dtype=np.float64),
        np.ascontiguousarray(images, dtype=np.float64),
        float(pixel_angle),
        float(DEPTH_TOLERANCE),
        float(MAX_SLOPE),
    )
    return values, total > 0


def _closest_normals(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Smooth unit normals ``(P, 3)`` of the mesh ``(vertices, faces)`` at the points of it
    closest to ``points`` ``(P, 3)``, among the faces with the nearest centroids."""
    from scipy.spatial import cKDTree

    from models.export import _kernels
    from models.geometry.mesh import crease_normals

    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    centroids = vertices[faces].mean(1)
    k = min(NORMAL_CANDIDATES, len(faces))
    _, candidates = cKDTree(centroids).query(points, k=k, workers=-1)
    candidates = np.asarray(candidates, dtype=np.int64).reshape(len(points), k)
    face, bary = _kernels.closest_on_candidates(
        np.ascontiguousarray(points), candidates, vertices, faces
    )
    # crease-aware corner normals: hard edges of the detail stay hard in the map
    corners = crease_normals(vertices, faces).astype(np.float64)[face]  # (P, 3, 3)
    return _unit(np.einsum("pk,pkc->pc", bary, corners), np.array([0.0, 1.0, 0.0]))


def _blend(bary: np.ndarray, values: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """``sum_k bary[:, k] * values[corners[:, k]]``: ``(P, C)``."""
    return (
        bary[:, 0:1] * values[corners[:, 0]]
        + bary[:, 1:2] * values[corners[:, 1]]
        + bary[:, 2:3] * values[corners[:, 2]]
    )


def _unit(x: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    length = np.linalg.norm(x, axis=1, keepdims=True)
    fallback = np.broadcast_to(fallback, x.shape)
    return np.where(length > 1e-12, x / np.maximum(length, 1e-30), fallback)
