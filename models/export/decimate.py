"""Face budgets: quadric decimation of a mesh to a face count (fast-simplification, MIT)."""

from __future__ import annotations

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

    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    if target_faces < 1:
        raise ValueError(f"target_faces must be >= 1, got {target_faces}")
    if len(faces) <= target_faces * (1.0 + FACE_TOLERANCE):
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
