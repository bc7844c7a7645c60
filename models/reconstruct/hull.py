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
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    points = np.stack([x.ravel(), y.ravel(), z.ravel(), np.ones(x.size)], axis=1)
    occupancy = np.ones(x.size, dtype=np.float32)
    alive = np.arange(x.size)
    for view in range(len(cams)):
        # Only voxels every earlier view kept can still be inside: project those alone.
        clip = points[alive] @ cams.mvp[view].T
        ndc = clip[:, :2] / clip[:, 3:4]
        px = (ndc[:, 0] + 1.0) * tile / 2.0 - 0.5
        py = (1.0 - ndc[:, 1]) * tile / 2.0 - 0.5
        value = _bilinear(masks[view], px, py)
        occupancy[alive] = np.minimum(occupancy[alive], value)
        alive = alive[value > 0.0]
    occupancy[np.setdiff1d(np.arange(x.size), alive, assume_unique=True)] = 0.0
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
    mesh = trimesh.Trimesh(verts, faces, process=True)
    mesh = _drop_specks(mesh, params.min_component_fraction)
    if mesh.volume < 0:
        mesh.invert()
    return mesh


def _drop_specks(mesh: trimesh.Trimesh, fraction: float) -> trimesh.Trimesh:
    parts = mesh.split(only_watertight=False)
    if len(parts) <= 1:
        return mesh
    areas = np.array([p.area for p in parts])
    keep = [p for p, a in zip(parts, areas, strict=True) if a >= fraction * areas.max()]
    return trimesh.util.concatenate(keep)


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
