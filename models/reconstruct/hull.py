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
from scipy.ndimage import gaussian_filter, median_filter

from models.bundle.cameras import BundleCameras
from models.bundle.memo import BundleMemo, decoded_views
from models.bundle.spec import Bundle
from models.geometry.mesh import NORMALISED_EXTENT
from models.reconstruct.depth import (
    MIN_TILE,
    DepthCarveParams,
    ViewIntegral,
    carve_factor,
    carve_with_depth,
    integrate_views,
    mask_hull_fronts,
)

#: Half side of the carved cube (bundle frame); the normalised object lies within 0.9,
#: and refinement accepts an init within 1 without rescaling it.
HULL_BOX = 0.95
#: Where the corner test reads the normal map: this fraction of the half width inside.
ROUND_PROBE = 0.25
#: Sideways normal component (camera x) above which a silhouette counts as turning.
ROUND_MIN_SIDEWAYS = 0.35
#: Rows narrower than this many pixels of half width are never rounded (too few pixels).
ROUND_MIN_HALF_PX = 4
#: The corner test is decided over a window of tile // this many rows.
ROUND_ROW_WINDOW_DIVISOR = 16
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
    round_corners: bool = True
    """Carve an elliptic arc into the corner between two adjacent views where both views'
    normal maps show the surface turning toward their silhouettes (a can, a fruit): four views
    alone leave a round object's hull a rounded square."""
    smooth_voxels: float = 1.0
    """Gaussian blur (voxels) of the occupancy before the surface is extracted: removes the
    one-voxel slots and tunnels that carving along pixel rows leaves (gaps narrower than about
    two voxels close); 0 turns it off."""
    min_component_fraction: float = 0.002
    """Components whose area is below this fraction of the largest one are dropped (specks
    from single anti-aliased pixels)."""
    depth_carve: bool = True
    """Also carve the voxels that lie clearly in front of the surface each view's normal map
    integrates to (:mod:`models.reconstruct.depth`): concavities a view sees into (gaps
    between parts, a recess, a box turned between two views) are open from the start. Costs
    about 0.3 s at 512-px tiles; bundles with tiles under 256 px are not carved."""
    depth_margin: float = 0.02
    """Bundle units a voxel must lie in front of a view's integrated surface to be carved
    (about one voxel of the default grid)."""

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
        if params.smooth_voxels < 0:
            raise HullParamsError(f"smooth_voxels must be >= 0, got {params.smooth_voxels}")
        if params.depth_margin < 0:
            raise HullParamsError(f"depth_margin must be >= 0, got {params.depth_margin}")
        if not 0.0 <= params.min_component_fraction < 1.0:
            raise HullParamsError(
                f"min_component_fraction must be in [0, 1), got {params.min_component_fraction}"
            )
        return params


def carve_occupancy(
    bundle: Bundle, grid: int, round_corners: bool = False, depth: DepthCarveParams | None = None
) -> np.ndarray:
    """The first of :func:`carve_occupancies`: the hull's occupancy."""
    return carve_occupancies(bundle, grid, round_corners, depth)[0]


def voxel_centres(grid: int) -> np.ndarray:
    """``(grid,)`` float32: the voxel centres along each axis of the carved cube (bundle frame),
    ``-HULL_BOX + (i + 0.5) * 2 HULL_BOX / grid``."""
    step = 2.0 * HULL_BOX / grid
    return (-HULL_BOX + (np.arange(grid) + 0.5) * step).astype(np.float32)


def carve_occupancies(
    bundle: Bundle, grid: int, round_corners: bool = False, depth: DepthCarveParams | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(occupancy, bound)``, both ``(grid, grid, grid)`` float32: the hull's occupancy as
    described below, and the masks' own hull (``bound``: no rounded corners, no depth carving),
    the only true outer bound of the object.

    Occupancy ``(grid, grid, grid)`` float32 in [0, 1], indexed ``[x, y, z]`` (bundle frame).

    Voxel ``i`` along an axis has its centre at ``-HULL_BOX + (i + 0.5) * 2 HULL_BOX / grid``.
    A voxel's value is the minimum over views of the mask sampled bilinearly at its projection
    (0 for a projection outside the image). With ``round_corners`` the corners between
    adjacent views whose normal maps show a turning surface are carved to an ellipse
    (:func:`_row_offsets`). With ``depth`` the voxels in front of the surface each view's
    normal map integrates to are carved last (:func:`models.reconstruct.depth.carve_with_depth`,
    anchored on the masks' hull before any rounding).
    """
    decoded_normals, masks = decoded_views(bundle)  # (4, T, T, 3) camera space, (4, T, T)
    masks = masks.astype(np.float32)  # row 0 at the top
    normals = decoded_normals if round_corners else None
    cams = BundleCameras.from_spec(bundle.spec)
    tile = masks.shape[1]
    step = 2.0 * HULL_BOX / grid
    axis = voxel_centres(grid)
    occupancy = np.ones((grid, grid, grid), dtype=np.float32)
    offsets: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
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
        if round_corners:
            # The voxel's sideways coordinate in this view (camera x through the origin):
            # comparing it with the silhouette's extent scaled to the origin's depth avoids
            # perspective inflating the offsets of voxels near the camera.
            r = cams.rotations[view][0].astype(np.float32)
            lateral = (r[0] * axis[:, None, None] + r[1] * axis[None, :, None]
                       + r[2] * axis[None, None, :])
            scale = float(bundle.spec.distance / cams.projection[0, 0]) * 2.0 / tile
            rows = silhouette_rows(masks[view] > 0.5, normals[view])
            offsets.append(_row_offsets(rows, lateral, py, scale))
    # The spec centres the object's bounding box and scales its longest side to 1.8, so
    # nothing lies beyond 0.9 on any axis. The masks alone leave a tent above an open top or a
    # flat lid and below the bottom (at 5 degrees elevation a point a little above a lid's
    # centre projects inside the lid's thin ellipse in every view): about 0.06 on a cup.
    # The occupancy falls to 0.5 at the box's faces, so the surface lands on them.
    half = NORMALISED_EXTENT / 2.0
    inside_box = np.clip((half - np.abs(axis)) / step + 0.5, 0.0, 1.0).astype(np.float32)
    np.minimum(occupancy, inside_box[:, None, None], out=occupancy)
    np.minimum(occupancy, inside_box[None, :, None], out=occupancy)
    np.minimum(occupancy, inside_box[None, None, :], out=occupancy)
    # The masks' own hull: what depth carving anchors on (rounding cuts into a box's edges).
    bound = occupancy.copy()
    if round_corners:
        # Adjacent views look along perpendicular axes: a voxel at normalised offsets (uA, uB)
        # from the two silhouettes' centres is inside the inscribed ellipse when
        # uA^2 + uB^2 <= 1. The value ramps over about a pixel, as the masks do.
        for a in range(len(offsets)):
            b = (a + 1) % len(offsets)
            (ua, round_a, half_a), (ub, round_b, half_b) = offsets[a], offsets[b]
            radius = np.sqrt(ua * ua + ub * ub)
            inside = 0.5 + (1.0 - radius) * np.minimum(half_a, half_b)
            rounded = np.where(round_a & round_b, np.clip(inside, 0.0, 1.0), 1.0)
            np.minimum(occupancy, rounded.astype(np.float32), out=occupancy)
    if depth is not None:
        integrals = fronts = None
        if tile >= MIN_TILE:
            factor = carve_factor(tile, depth)
            fronts = mask_hull_fronts(bound, axis, cams.world_to_cam, cams.mvp, tile // factor)
            # The integration is cut at the masks' hull's steps; the depth term reads the
            # same integrals, cut at the same steps of a hull of the same grid.
            integrals = bundle_integrals(bundle, factor, fronts if grid == FRONT_GRID else None)
        occupancy = carve_with_depth(occupancy, bound, axis, decoded_normals, masks > 0.5,
                                     cams.world_to_cam, cams.mvp, cams.focal_px, depth,
                                     integrals, fronts)
    return occupancy.reshape(grid, grid, grid), bound.reshape(grid, grid, grid)


#: Grid of the masks' hull whose fronts cut the depth integration (:func:`bundle_integrals`),
#: whatever grid the hull init uses, so that every stage of an asset integrates alike.
FRONT_GRID = 96

#: The view integrals of the last bundle asked for, per block size: the hull's depth carving
#: and refinement's depth term integrate the same maps (0.35 s for a 512-px bundle), and in
#: one process (``foundry3d reconstruct``) they share one integration.
_INTEGRALS = BundleMemo()


def bundle_integrals(
    bundle: Bundle, factor: int, fronts: list[np.ndarray] | None = None
) -> list[ViewIntegral]:
    """``bundle``'s normal maps and masks averaged over ``factor``-pixel blocks and integrated
    (:func:`models.reconstruct.depth.integrate_views`), cut at the steps of the masks' hull at
    :data:`FRONT_GRID` (``fronts``, when the caller has them at that grid, else computed
    here); kept for the next call with the same bundle. The lists are shared: do not modify
    them."""
    kept = _INTEGRALS.values(bundle)
    if factor not in kept:
        cams = BundleCameras.from_spec(bundle.spec)
        normals, masks = decoded_views(bundle)
        low = masks.shape[1] // factor
        if fronts is None:
            _, bound = carve_occupancies(bundle, FRONT_GRID)
            fronts = mask_hull_fronts(bound, voxel_centres(FRONT_GRID), cams.world_to_cam,
                                      cams.mvp, low)
        kept[factor] = integrate_views(normals, masks, cams.focal_px, factor, fronts)
    return kept[factor]


def keep_bundle_integrals(bundle: Bundle, factor: int, integrals: list[ViewIntegral]) -> None:
    """Make ``integrals`` what :func:`bundle_integrals` gives for ``bundle`` at ``factor``
    from now on (the reconstruction benchmark's exact-depth ceiling,
    ``benchmarks/depth_oracle.py``)."""
    _INTEGRALS.values(bundle)[factor] = integrals


def visual_hull(bundle: Bundle, params: HullParams | None = None) -> trimesh.Trimesh:
    """The visual hull of ``bundle``'s masks as a closed mesh.

    Returns a :class:`trimesh.Trimesh`, vertices ``(V, 3)`` float64 in the bundle frame (+Y up,
    front +Z), faces wound outward; one component per separate part the views show. Raises
    :class:`HullParamsError` when the masks leave nothing (an empty bundle).
    """
    params = params or HullParams()
    occupancy, _ = carve_occupancies(bundle, params.grid, params.round_corners,
                                     _depth_params(params))
    return _surface(occupancy, params)


def visual_hull_with_bound(
    bundle: Bundle, params: HullParams | None = None
) -> tuple[trimesh.Trimesh, trimesh.Trimesh]:
    """``(hull, bound)`` from one carving: :func:`visual_hull`'s mesh and the masks' own hull
    (no rounded corners, no depth carving) as a mesh, the bound the hull prior pulls into."""
    params = params or HullParams()
    occupancy, bound = carve_occupancies(bundle, params.grid, params.round_corners,
                                         _depth_params(params))
    return _surface(occupancy, params), _surface(bound, params)


def _depth_params(params: HullParams) -> DepthCarveParams | None:
    return DepthCarveParams(margin=params.depth_margin) if params.depth_carve else None


def _surface(occupancy: np.ndarray, params: HullParams) -> trimesh.Trimesh:
    """The closed surface at :data:`HULL_LEVEL` of ``occupancy`` (see :func:`visual_hull`)."""
    from skimage.measure import marching_cubes

    if occupancy.max() <= HULL_LEVEL:
        raise HullParamsError("the bundle's masks carve the whole volume away: nothing to mesh")
    if params.smooth_voxels > 0:
        occupancy = gaussian_filter(occupancy, params.smooth_voxels)
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


def silhouette_rows(
    mask: np.ndarray, normals: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For one view's ``mask`` ``(T, T)`` bool and camera-space ``normals`` ``(T, T, 3)``, per
    image row: silhouette ``left`` and ``right`` pixel columns ``(T,)`` float
    (NaN on empty rows) and ``round`` ``(T, 2)`` bool, whether the surface turns toward the
    left / right silhouette.

    The test reads the normal map a quarter of the row's half width inside each silhouette: a
    round section's normal there still points well sideways (``|n_x| = 0.75`` for a circle), a
    flat face's points at the camera (``n_x = 0``); a rounded edge narrower than that reads flat.
    """
    tile = mask.shape[0]
    has = mask.any(axis=1)
    left = np.where(has, np.argmax(mask, axis=1), 0)
    right = np.where(has, tile - 1 - np.argmax(mask[:, ::-1], axis=1), 0)
    half = (right - left) / 2.0
    inset = np.maximum(1, np.round(half * ROUND_PROBE)).astype(np.int64)
    rows = np.arange(tile)
    probe_l = np.clip(left + inset, 0, tile - 1)
    probe_r = np.clip(right - inset, 0, tile - 1)
    round_l = mask[rows, probe_l] & (normals[rows, probe_l, 0] < -ROUND_MIN_SIDEWAYS)
    round_r = mask[rows, probe_r] & (normals[rows, probe_r, 0] > ROUND_MIN_SIDEWAYS)
    wide = has & (half >= ROUND_MIN_HALF_PX)
    # The test is per row and noisy; a row rounded between two that are not would cut a slot
    # through the corner (and a tunnel into the surface): decide over a window of rows.
    window = max(3, tile // ROUND_ROW_WINDOW_DIVISOR) | 1
    round_l = median_filter((round_l & wide).astype(np.uint8), size=window, mode="nearest") > 0
    round_r = median_filter((round_r & wide).astype(np.uint8), size=window, mode="nearest") > 0
    left_f = np.where(has, left - 0.5, np.nan)
    right_f = np.where(has, right + 0.5, np.nan)
    return left_f, right_f, np.stack([round_l & wide, round_r & wide], axis=1)


def _row_offsets(
    rows: tuple[np.ndarray, np.ndarray, np.ndarray],
    lateral: np.ndarray,
    py: np.ndarray,
    scale: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For voxels at camera-x ``lateral`` (bundle units) projecting to rows ``py`` of a view
    whose :func:`silhouette_rows` are ``rows``:
    the normalised offset from their row's silhouette centre (-1 at the left edge, +1 at the
    right), whether the surface turns on that side, and the row's half width in voxel-ramp
    units (pixels); arrays shaped like ``lateral``. ``scale`` turns pixels into bundle units at
    the origin's depth."""
    left, right, round_side = rows
    tile = len(left)
    row = np.clip(np.round(py), 0, tile - 1).astype(np.int64)
    lo = (left[row] + 0.5 - tile / 2.0) * scale
    hi = (right[row] + 0.5 - tile / 2.0) * scale
    centre = (lo + hi) / 2.0
    half = np.maximum((hi - lo) / 2.0, 1e-6)
    u = np.nan_to_num((lateral - centre) / half, nan=0.0)
    side = (u > 0).astype(np.int64)
    turning = round_side[row, side] & np.isfinite(lo)
    return u, turning, np.nan_to_num(half / scale, nan=0.0)


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
