"""Differentiable face and vertex normals in torch, for refinement: the torch twin of
:mod:`models.geometry.normals` (same conventions; gradients reach the vertex positions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["face_cross_t", "face_normals_t", "vertex_normals_t"]

#: Smallest length divided by when normalising; a zero-area face gets a zero normal.
NORMALISE_EPS = 1e-12


def face_cross_t(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """``(v1 - v0) x (v2 - v0)`` per face: ``(F, 3)``, length twice the face's area."""
    tri = vertices[faces]
    return torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=1)


def face_normals_t(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Unit face normals ``(F, 3)`` in the dtype and device of ``vertices``."""
    return F.normalize(face_cross_t(vertices, faces), dim=1, eps=NORMALISE_EPS)


def vertex_normals_t(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals ``(V, 3)``."""
    cross = face_cross_t(vertices, faces)
    summed = torch.zeros_like(vertices)
    for k in range(3):
        summed = summed.index_add(0, faces[:, k], cross)
    return F.normalize(summed, dim=1, eps=NORMALISE_EPS)
