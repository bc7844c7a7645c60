"""Quadric decimation (fast-simplification, MIT): to a face budget (export LODs, within 2 %),
or to about the face count of a target edge length (dense inits before remeshing).

Remeshing (:mod:`models.geometry.remesh`) collapses a bounded share of edges per pass, so a dense
marching-cubes surface (a visual hull: tens of thousands of faces) would need many passes to
reach a coarse edge length; one quadric decimation gets it there first, keeping the shape."""

from __future__ import annotations

import math

import numpy as np

#: A decimated mesh must land within this fraction of its face target.
FACE_TOLERANCE = 0.02
#: Aggressiveness of fast-simplification's collapses (its default; lower keeps shape better
#: but may stop short of the target).
_AGGRESSIVENESS = 7.0
#: Simplification passes before giving up on a face target.
_MAX_PASSES = 16


class DecimationError(RuntimeError):
    """The decimator could not reach a face target within :data:`FACE_TOLERANCE`."""


def decimate(
    vertices: np.ndarray, faces: np.ndarray, target_faces: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(vertices, faces)`` simplified to ``target_faces`` faces (within 2 %).

    ``vertices`` ``(V, 3)`` float, any frame; ``faces`` ``(F, 3)`` int. A mesh with no more than
    ``target_faces * 1.02`` faces is returned unchanged (copies). Returns ``(V', 3)`` float64
    and ``(F', 3)`` int64 in the same frame; unreferenced vertices are dropped.
    """
    import fast_simplification

    vertices, faces, within = decimation_inputs(vertices, faces, target_faces)
    if within:
        return vertices.copy(), faces.copy()
    # Coincident vertices and zero-area faces (poles, seams of generated meshes) lock edges
    # that quadric collapses would otherwise remove: weld and drop them first.
    vertices, faces = _clean(vertices, faces)
    # A pass sometimes stops short of the count (its error bounds lock the last collapses);
    # a fresh pass over its output, with new quadrics, goes on from there (an open cone with a
    # needle tip needs 7 passes to reach a quarter of its faces).
    v, f = vertices, faces
    for _ in range(_MAX_PASSES):
        v, f = fast_simplification.simplify(
            v, f.astype(np.int32), target_count=target_faces, agg=_AGGRESSIVENESS
        )
        v, f = _clean(np.asarray(v, np.float64), np.asarray(f, np.int64))
        if abs(len(f) - target_faces) <= FACE_TOLERANCE * target_faces:
            return v, f
        if len(f) < target_faces:
            break
    raise DecimationError(
        f"decimation reached {len(f)} faces for a target of {target_faces} "
        f"(tolerance {FACE_TOLERANCE:.0%})"
    )


#: Area of an equilateral triangle of unit edge.
EQUILATERAL_AREA = math.sqrt(3.0) / 4.0
#: Meshes with more than this multiple of the target face count are decimated.
DECIMATE_ABOVE = 2.0


def decimation_inputs(vertices: np.ndarray, faces: np.ndarray,
                      target_faces: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(V, 3)`` float64 vertices, ``(F, 3)`` int64 faces, and whether they are already within
    :data:`FACE_TOLERANCE` of ``target_faces`` (nothing to remove); raises on a target below 1.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    if target_faces < 1:
        raise ValueError(f"target_faces must be >= 1, got {target_faces}")
    return vertices, faces, len(faces) <= target_faces * (1.0 + FACE_TOLERANCE)


def faces_for_edge(area: float, edge: float) -> int:
    """Face count of a surface of ``area`` tiled by equilateral triangles of side ``edge``."""
    return max(4, int(area / (EQUILATERAL_AREA * edge * edge)))


def decimate_to_edge(
    vertices: np.ndarray, faces: np.ndarray, edge: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(vertices, faces)`` decimated to about the face count of edge length ``edge``.

    ``vertices``: ``(V, 3)`` float (any frame, same units as ``edge``); ``faces``: ``(F, 3)``
    int. Returns new ``(V', 3)`` float64 and ``(F', 3)`` int64 arrays; meshes already within
    :data:`DECIMATE_ABOVE` times the target are returned as copies, unchanged.
    """
    import fast_simplification

    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    tri = v[f]
    area = 0.5 * float(np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]),
                                      axis=1).sum())
    target = faces_for_edge(area, edge)
    if len(f) <= DECIMATE_ABOVE * target:
        return v.copy(), f.copy()
    out_v, out_f = fast_simplification.simplify(v.astype(np.float32), f.astype(np.int32),
                                                target_count=target)
    return np.asarray(out_v, dtype=np.float64), np.asarray(out_f, dtype=np.int64)


def _clean(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertices at one position welded; faces with a repeated corner or zero area dropped."""
    from models.geometry.mesh import weld_positions

    faces = weld_positions(vertices, faces)
    tri = vertices[faces]
    area2 = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    repeated = (
        (faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2]) | (faces[:, 0] == faces[:, 2])
    )
    return _compact(vertices, faces[~repeated & (area2 > 0)])


def _compact(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop vertices no face uses; re-index the faces."""
    used, inverse = np.unique(faces.reshape(-1), return_inverse=True)
    return vertices[used], inverse.reshape(-1, 3).astype(np.int64)
