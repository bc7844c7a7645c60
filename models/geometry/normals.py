"""Face and vertex normals of triangle meshes, in numpy: the one place they are computed.

Conventions: ``vertices`` ``(V, 3)`` float, ``faces`` ``(F, 3)`` int indices; a face's normal
follows the right-hand rule over its corners (counter-clockwise seen from outside points
out), in the frame of the vertices. The differentiable torch versions for refinement live in
:mod:`models.geometry.normals_torch`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["face_cross", "face_normals", "face_normals_and_areas", "vertex_normals"]


def face_cross(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """``(v1 - v0) x (v2 - v0)`` per face: ``(F, 3)`` float64 along the normal, whose length
    is twice the face's area (units of the vertices, squared)."""
    tri = np.asarray(vertices, dtype=np.float64)[np.asarray(faces, dtype=np.int64)]
    return np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])


def face_normals_and_areas(
    vertices: np.ndarray, faces: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Unit face normals ``(F, 3)`` float64 (zero rows for zero-area faces) and face areas
    ``(F,)`` float64, in the units of the vertices squared."""
    cross = face_cross(vertices, faces)
    double_area = np.linalg.norm(cross, axis=1)
    normals = np.divide(
        cross, double_area[:, None], out=np.zeros_like(cross), where=double_area[:, None] > 0
    )
    return normals, 0.5 * double_area


def face_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit face normals ``(F, 3)`` float64; zero rows for zero-area faces."""
    return face_normals_and_areas(vertices, faces)[0]


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals ``(V, 3)`` float64 (zero rows for unused vertices).

    Each face adds its :func:`face_cross` (area-weighted by its length) to its three corners.
    """
    faces = np.asarray(faces, dtype=np.int64)
    n_vertices = len(vertices)
    cross = face_cross(vertices, faces)
    corner = faces.ravel()
    summed = np.stack(
        [np.bincount(corner, np.repeat(cross[:, k], 3), minlength=n_vertices) for k in range(3)],
        axis=1,
    )
    length = np.linalg.norm(summed, axis=1, keepdims=True)
    return np.divide(summed, length, out=np.zeros_like(summed), where=length > 0)
