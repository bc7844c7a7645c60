"""Quadric decimation of dense meshes (fast-simplification) down to a target edge length.

Remeshing (:mod:`models.geometry.remesh`) collapses a bounded share of edges per pass, so a dense
marching-cubes surface (a visual hull: tens of thousands of faces) would need many passes to reach
a coarse edge length; one quadric decimation gets it there first, keeping the shape.
"""

from __future__ import annotations

import math

import numpy as np

#: Area of an equilateral triangle of unit edge.
EQUILATERAL_AREA = math.sqrt(3.0) / 4.0
#: Meshes with more than this multiple of the target face count are decimated.
DECIMATE_ABOVE = 2.0


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
