"""Levels of detail of an exported asset: the mesh decimated to each LOD's face budget, and
one written LOD as the writers and renderers take it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh

#: Edges shorter than this fraction of the mesh's median edge (needle tips, the rings of a
#: pole) are welded before decimation when both ends fall in one grid cell of that size.
SLIVER_EDGE_FRACTION = 0.5
#: Border-keeping passes before falling back to passes that may move the open border.
BORDER_PASSES = 6
#: A border-keeping pass that removes less than this share of the faces above the target has
#: stalled; the remaining faces are taken by ordinary passes.
STALL_SHARE = 0.2


def decimate_lod(
    vertices: np.ndarray, faces: np.ndarray, target_faces: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(vertices (V', 3) float64, faces (F', 3) int64)``: the mesh simplified to
    ``target_faces`` (within :data:`models.geometry.decimate.FACE_TOLERANCE`), same frame.

    Like :func:`models.geometry.decimate.decimate`, but open borders are kept: fast-simplification
    puts no cost on moving a border, so its passes eat open rims first (an open cone's base
    ends as a triangle at a quarter of its faces, and its silhouette with it). Here the passes
    keep every border vertex while they make progress; only the faces they cannot remove are
    left to ordinary passes. Sliver edges are welded first, since the rings of slivers at a
    needle tip refuse the collapses (they would flip) and stall the border-keeping passes.
    """
    import fast_simplification

    from models.geometry.decimate import FACE_TOLERANCE, decimate, decimation_inputs

    vertices, faces, within = decimation_inputs(vertices, faces, target_faces)
    if within:
        return vertices.copy(), faces.copy()
    v, f = weld_slivers(vertices, faces)
    for _ in range(BORDER_PASSES):
        excess = len(f) - target_faces
        if excess <= FACE_TOLERANCE * target_faces:
            break
        out_v, out_f = fast_simplification.simplify(
            v, f.astype(np.int32), target_count=target_faces, preserve_border=True
        )
        out_v, out_f = _drop_degenerate(np.asarray(out_v, np.float64), np.asarray(out_f, np.int64))
        removed = len(f) - len(out_f)
        v, f = out_v, out_f
        if removed < STALL_SHARE * excess:
            break
    return decimate(v, f, target_faces)


def weld_slivers(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weld the ends of edges shorter than :data:`SLIVER_EDGE_FRACTION` of the median edge
    whose ends share a grid cell of that size (so a welded cluster spans less than a cell and
    two surfaces near each other are never joined: only edges connect). Each cluster takes its
    mean position; faces left with a repeated corner are dropped, unused vertices too."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    length = np.linalg.norm(vertices[edges[:, 0]] - vertices[edges[:, 1]], axis=1)
    cell = SLIVER_EDGE_FRACTION * float(np.median(length))
    if not cell > 0:
        return _drop_degenerate(vertices, faces)
    grid = np.floor((vertices - vertices.min(0)) / cell).astype(np.int64)
    short = (length < cell) & (grid[edges[:, 0]] == grid[edges[:, 1]]).all(1)
    n = len(vertices)
    pairs = edges[short]
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    count, label = connected_components(graph, directed=False)
    sums = np.zeros((count, 3))
    np.add.at(sums, label, vertices)
    welded = sums / np.bincount(label, minlength=count)[:, None]
    return _drop_degenerate(welded, label[faces])


def _drop_degenerate(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Faces with a repeated corner or zero area, and unused vertices, dropped."""
    tri = vertices[faces]
    area2 = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    repeated = (
        (faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2]) | (faces[:, 0] == faces[:, 2])
    )
    faces = faces[~repeated & (area2 > 0)]
    used, inverse = np.unique(faces.reshape(-1), return_inverse=True)
    return vertices[used], inverse.reshape(-1, 3).astype(np.int64)


@dataclass
class LodMesh:
    """One written level of detail, in the bundle frame: a :class:`models.export.bake.UVMesh`
    with its images, or (vertex mode) vertices, faces and sRGB colours in [0, 1]."""

    vertices: np.ndarray
    faces: np.ndarray
    normals: np.ndarray
    uv: np.ndarray | None = None
    tangents: np.ndarray | None = None
    colours: np.ndarray | None = None
    base_colour: np.ndarray | None = None
    normal_map: np.ndarray | None = None

    def to_trimesh(self) -> trimesh.Trimesh:
        """A :class:`trimesh.Trimesh` (bundle frame) that the renderers draw: textured
        (trimesh's bottom-left UVs) or vertex-coloured."""
        from PIL import Image

        mesh = trimesh.Trimesh(self.vertices, self.faces, process=False)
        if self.base_colour is not None:
            material = trimesh.visual.material.PBRMaterial(
                baseColorTexture=Image.fromarray(self.base_colour, "RGB")
            )
            uv = np.stack([self.uv[:, 0], 1.0 - self.uv[:, 1]], axis=1)
            mesh.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
        elif self.colours is not None:
            rgba = np.concatenate([self.colours, np.ones((len(self.colours), 1))], axis=1)
            mesh.visual = trimesh.visual.ColorVisuals(
                mesh, vertex_colors=np.round(np.clip(rgba, 0, 1) * 255).astype(np.uint8)
            )
        return mesh
