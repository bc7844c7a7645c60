"""The visual hull of a bundle: the 4 masks carved into an occupancy grid, then a surface.

Every voxel centre of a regular grid over ``[-HULL_BOX, HULL_BOX]^3`` (bundle frame) is projected
into each of the bundle's views (cameras from the sidecar, :mod:`models.bundle.cameras`); its
occupancy is the smallest bilinearly sampled mask value over the views, so a voxel survives only
where every view sees foreground. Marching cubes (scikit-image) at occupancy 0.5 gives the
surface with sub-voxel placement along the mask edges. Any hole or gap that one view shows is
therefore open from the start: a mug's handle loop, the space between two separate parts.

Unseen concavities (a cup's inside, which no view at 5 degrees elevation looks into) stay
filled: the hull is the largest shape consistent with the masks.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from difflib import get_close_matches
from typing import Any

import numpy as np
import trimesh

from models.bundle.cameras import BundleCameras
from models.bundle.spec import Bundle

#: Half side of the carved cube (bundle frame); the normalised object lies within 0.9,
#: and refinement accepts an init within 1 without rescaling it.
HULL_BOX = 0.95
#: Occupancy level of the extracted surface (masks are 0 outside, 1 inside).
HULL_LEVEL = 0.5


class HullParamsError(ValueError):
    """Bad visual-hull settings (permanent)."""

    retryable = False


@dataclass(frozen=True)
class HullParams:
    """Settings of :func:`visual_hull`."""

    grid: int = 96
    """Voxels per side of the carved cube (96: 0.021 bundle units per voxel)."""
    min_component_fraction: float = 0.002
    """Components whose area is below this fraction of the largest one are dropped (specks
    from single anti-aliased pixels)."""

    @classmethod
    def from_mapping(cls, data: dict[str, Any] | None) -> HullParams:
        """Params from a plain dict; an unknown key raises naming the nearest valid one."""
        known = [f.name for f in fields(cls)]
        for key in data or {}:
            if key not in known:
                near = get_close_matches(key, known, n=1)
                hint = f"; did you mean {near[0]!r}?" if near else f"; known: {known}"
                raise HullParamsError(f"unknown hull param {key!r}{hint}")
        params = replace(cls(), **(data or {}))
        if not 16 <= params.grid <= 512:
            raise HullParamsError(f"hull grid must be within 16..512, got {params.grid}")
        if not 0.0 <= params.min_component_fraction < 1.0:
            raise HullParamsError(
                f"min_component_fraction must be in [0, 1), got {params.min_component_fraction}"
            )
        return params


def carve_occupancy(bundle: Bundle, grid: int) -> np.ndarray:
    """Occupancy ``(grid, grid, grid)`` float32 in [0, 1], indexed ``[x, y, z]`` (bundle frame).

    Voxel ``i`` along an axis has its centre at ``-HULL_BOX + (i + 0.5) * 2 HULL_BOX / grid``.
    A voxel's value is the minimum over views of the mask sampled bilinearly at its projection
    (0 for a projection outside the image).
    """
    masks = bundle.masks().astype(np.float32)  # (4, T, T), row 0 at the top
    cams = BundleCameras.from_spec(bundle.spec)
    tile = masks.shape[1]
    step = 2.0 * HULL_BOX / grid
    axis = -HULL_BOX + (np.arange(grid) + 0.5) * step
    axis = axis.astype(np.float32)
    occupancy = np.ones((grid, grid, grid), dtype=np.float32)
    for view in range(len(cams)):
        m = cams.mvp[view].astype(np.float32)

        def row(r: int, m: np.ndarray = m) -> np.ndarray:
            # Clip coordinate r over the whole grid as an outer sum (the grid is separable).
            return (m[r, 0] * axis[:, None, None] + m[r, 1] * axis[None, :, None]
                    + m[r, 2] * axis[None, None, :] + m[r, 3])

        w = row(3)
        px = (row(0) / w + 1.0) * (tile / 2.0) - 0.5
        py = (1.0 - row(1) / w) * (tile / 2.0) - 0.5
        np.minimum(occupancy, _bilinear(masks[view], px, py), out=occupancy)
    return occupancy.reshape(grid, grid, grid)


def visual_hull(bundle: Bundle, params: HullParams | None = None) -> trimesh.Trimesh:
    """The visual hull of ``bundle``'s masks as a closed mesh.

    Returns a :class:`trimesh.Trimesh`, vertices ``(V, 3)`` float64 in the bundle frame (+Y up,
    front +Z), faces wound outward; one component per separate part the views show. Raises
    :class:`HullParamsError` when the masks leave nothing (an empty bundle).
    """
    from skimage.measure import marching_cubes

    params = params or HullParams()
    occupancy = carve_occupancy(bundle, params.grid)
    if occupancy.max() <= HULL_LEVEL:
        raise HullParamsError("the bundle's masks carve the whole volume away: nothing to mesh")
    # A zero border closes surfaces that touch the grid's edge.
    padded = np.pad(occupancy, 1)
    step = 2.0 * HULL_BOX / params.grid
    verts, faces, _, _ = marching_cubes(padded, level=HULL_LEVEL, spacing=(step, step, step))
    verts = verts - (HULL_BOX + 0.5 * step)  # padded index 1 is voxel 0's centre
    faces = _drop_specks(verts, faces.astype(np.int64), params.min_component_fraction)
    tri = verts[faces]
    signed_volume = np.einsum("fi,fi->f", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum()
    if signed_volume < 0:
        faces = faces[:, ::-1]
    mesh = trimesh.Trimesh(verts.astype(np.float64), faces, process=False)
    mesh.remove_unreferenced_vertices()
    return mesh


def _drop_specks(verts: np.ndarray, faces: np.ndarray, fraction: float) -> np.ndarray:
    """``faces`` without the components whose area is below ``fraction`` of the largest's."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(verts)
    rows = faces[:, [0, 1, 2]].ravel()
    cols = faces[:, [1, 2, 0]].ravel()
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    count, labels = connected_components(graph, directed=False)
    if count <= 1:
        return faces
    tri = verts[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    face_label = labels[faces[:, 0]]
    per_part = np.bincount(face_label, weights=area, minlength=count)
    keep = per_part >= fraction * per_part.max()
    return faces[keep[face_label]]


def _bilinear(image: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """``image`` ``(H, W)`` sampled at pixel coordinates (centres at integers); 0 outside."""
    h, w = image.shape
    padded = np.pad(image, 1)
    x = np.clip(px + 1.0, 0.0, w + 1.0 - 1e-6)
    y = np.clip(py + 1.0, 0.0, h + 1.0 - 1e-6)
    x0 = np.floor(x).astype(np.int64)
    y0 = np.floor(y).astype(np.int64)
    fx = (x - x0).astype(np.float32)
    fy = (y - y0).astype(np.float32)
    x1 = np.minimum(x0 + 1, w + 1)
    y1 = np.minimum(y0 + 1, h + 1)
    top = padded[y0, x0] * (1 - fx) + padded[y0, x1] * fx
    bottom = padded[y1, x0] * (1 - fx) + padded[y1, x1] * fx
    return top * (1 - fy) + bottom * fy
