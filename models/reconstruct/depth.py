"""Depth from a view's normal map, and space carving with that depth.

A view's camera-space normals give the gradient of the surface's log depth over the image: a
point at pixel offsets ``(u, v)`` from the principal point (``u`` right, ``v`` up, pixels) and
depth ``D`` along the view axis lies at ``(u D / F, v D / F, -D)`` (``F`` the focal length in
pixels), and the normal ``n`` is orthogonal to both image-direction tangents, which gives

    d(log D)/du = n_x / (n_z F - n_x u - n_y v),   d(log D)/dv = n_y / (n_z F - n_x u - n_y v).

Integrating that gradient field over the mask (weighted least squares) gives log depth up to
one constant per connected piece. The masks' visual hull fixes the constant: the object lies
inside it, so its visible surface lies at or behind the hull's front, and it touches the front
where another view's silhouette grazes it (a box's near edge, a can's near side). The constant
is therefore the smallest that keeps the piece behind the hull, read as a high quantile rather
than the maximum so that a few badly integrated pixels do not push the whole piece back, and
over pixels away from the silhouette, where the voxelised hull's front is reliable. The
hull must be the masks' own (no rounded corners): a rounded hull lies inside a box's edges.

Voxels clearly in front of that surface in some view are empty: concavities a view sees into
but no silhouette shows (a groove, a fruit's dimple, the round between two views' corners, a
box turned between two views) are carved from the hull before its surface is extracted. A
margin absorbs integration error; gradients at grazing normals are left out, reweighting keeps
an unseen depth jump a single large residual, and only pixels away from grazing surfaces,
creases and the silhouette carve. A jump between faces that look alike in the normals (a slot
whose walls run along the view, a cup's near rim over its far inner wall) leaves no trace in
them. Where another view's silhouette shows the step (a nut on a narrower shaft), the masks'
hull has it too, and the integration is cut there (:data:`FRONT_STEP`); where none does, a
view's carving is kept only if every view's silhouette survives it: an error that carves
through the object shows as mask pixels no voxel covers any more.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import binary_erosion, maximum_filter, minimum_filter
from scipy.sparse import coo_matrix, diags
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import spsolve

#: Neighbouring normals further apart than this (cosine) mark a crease or a depth jump: the
#: integrated depth next to them is not trusted for carving.
JUMP_MIN_COSINE = 0.5
#: Gradients where the normal faces the camera less than this (``n_z``) are not integrated:
#: near the silhouette the log-depth slope grows without bound and one pixel spans a jump.
GRAZING_MIN_NZ = 0.2
#: Reweighted least-squares rounds after the first solve (toward an L1 fit of the gradients).
ROBUST_ROUNDS = 3
#: Residual (log depth per pixel) beyond which a gradient's weight falls as 1 / residual.
ROBUST_SCALE = 0.002
#: Smallest tile (pixels) depth carving runs on; smaller bundles keep the hull as carved by
#: the masks. At 128-px tiles the integrated depth cut two spurious tunnels through a torus
#: (full resolution) or flattened a ball's unseen bottom (averaged to 64 px).
MIN_TILE = 256
#: Weight of the pull toward log depth 0 that fixes each piece's constant before anchoring.
GAUGE_WEIGHT = 1e-6
#: Bundle units between neighbouring pixels' masks-hull fronts, beyond what their normals'
#: slopes explain, at which the integration does not join them. The normal maps hide a step
#: between faces that look alike; the hull shows it when another view's silhouette does (toy
#: airplane 072-c's hexagonal nut on its shaft: its seen surface scored 0.90 of F@0.05 with the
#: steps joined, 1.000 cut). Over the 78 YCB objects against no cut: 10 up, 10 down by more
#: than 0.004, objects below the hull 3 -> 1 (072-c 0.788 -> 0.802, cup 065-b 0.648 -> 0.654),
#: median 0.960 -> 0.959. Cutting any step of 0.08, slopes left out, also cut steep walls
#: near silhouettes (the drill's barrel: 0.871 against 0.894) and left 2 below the hull; a
#: threshold of 0.05 lost the drill 0.05 and the median 0.003.
FRONT_STEP = 0.08


@dataclass(frozen=True)
class DepthCarveParams:
    """Settings of :func:`carve_with_depth`."""

    resolution: int = 128
    """Pixels per side the normal maps are averaged down to before integrating (128: about
    one hull voxel per pixel at the object's depth); at most half the tile."""
    margin: float = 0.02
    """Bundle units a voxel must lie in front of the integrated surface to be carved (about a
    voxel of the default hull grid): the integrated depth of smooth surfaces (fruit, cans) lies
    within 0.01 of the true depth at most pixels; 0.04 carved too little to help."""
    touch_quantile: float = 0.99
    """Quantile of a piece's ``log(hull front) - log depth`` over its trusted pixels taken as
    its constant (1.0 would be the exact "touches the hull" constant, which a single outlier
    moves)."""
    min_pixels: int = 100
    """Pieces with fewer anchoring pixels than this (at ``resolution``) are not anchored."""
    anchor_inset_px: int = 6
    """Pixels from the silhouette that anchoring pixels keep (at ``resolution``; scaled when a
    small tile integrates at a lower one): 6 kept two
    Duplo bricks' hulls from being carved 0.1 too deep (their studs' voxelised front lies
    behind them), 8 cost a banana's carving."""
    erode_px: int = 2
    """Pixels trusted depth keeps from a suspected jump, a grazing surface or the silhouette."""
    silhouette_tolerance: float = 0.01
    """A view's carving is undone when it leaves more than this fraction of some view's mask
    pixels (shrunk by ``erode_px``) with no occupied voxel: a correct carving changes no
    silhouette, and voxel rounding alone loses under 0.006 (measured on a cube, a banana)."""


def integrate_log_depth(
    normals: np.ndarray, mask: np.ndarray, focal_px: float, front: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Log depth up to a constant per piece, from one view's normal map.

    ``normals``: ``(H, W, 3)`` camera-space unit normals (x right, y up, z toward the camera);
    ``mask``: ``(H, W)`` bool foreground; ``focal_px``: focal length in pixels of this
    resolution, principal point at the image centre; ``front``: ``(H, W)`` the masks' hull's
    nearest depth per pixel (:func:`mask_hull_fronts`, NaN where none), whose steps of more
    than :data:`FRONT_STEP` beyond what the normals explain cut the integration. Returns
    ``log_depth`` ``(H, W)`` float64 (NaN outside the mask; depth ``D`` in the view's units
    along ``-z_cam`` is ``exp(log_depth + c)`` with one unknown ``c`` per piece) and ``pieces``
    ``(H, W)`` int (0 outside, 1.. the pieces the kept gradients connect).
    """
    h, w = mask.shape
    rows, cols = np.mgrid[0:h, 0:w]
    u = cols - (w - 1) / 2.0
    v = (h - 1) / 2.0 - rows
    nx, ny, nz = normals[..., 0], normals[..., 1], normals[..., 2]
    denom = nz * focal_px - nx * u - ny * v
    ok = mask & (nz > GRAZING_MIN_NZ) & (denom > 1e-6)
    safe = np.where(ok, denom, 1.0)
    grad_u = np.where(ok, nx / safe, 0.0)
    grad_v = np.where(ok, ny / safe, 0.0)

    index = -np.ones((h, w), dtype=np.int64)
    index[mask] = np.arange(int(mask.sum()))
    eq_a, eq_b, eq_rhs, eq_w = [], [], [], []
    # Horizontal pairs (column + 1 is +u) and vertical pairs (row - 1 is +v).
    for a_sl, b_sl, grad in (
        ((slice(None), slice(0, w - 1)), (slice(None), slice(1, w)), grad_u),
        ((slice(1, h), slice(None)), (slice(0, h - 1), slice(None)), grad_v),
    ):
        # Neighbours with normals far apart are mostly a crease (a V groove's tip), across
        # which depth is continuous; they stay in, and a real jump is left to the reweighting.
        keep = ok[a_sl] & ok[b_sl]
        if front is not None:
            # A step the silhouettes show (a nut over its narrower shaft) between faces whose
            # normals look alike: joined, the two sides would share one constant. Only the
            # part the normals' slopes do not explain counts: near a silhouette the surface
            # turns away and the front falls steeply from pixel to pixel.
            step = front[b_sl] - front[a_sl]
            slope = front[a_sl] * np.expm1(0.5 * (grad[a_sl] + grad[b_sl]))
            cut = (np.abs(step) > FRONT_STEP) & (np.abs(step - slope) > FRONT_STEP)
            keep &= ~cut  # NaN (no front) compares False: kept
        eq_a.append(index[a_sl][keep])
        eq_b.append(index[b_sl][keep])
        eq_rhs.append(0.5 * (grad[a_sl][keep] + grad[b_sl][keep]))
        eq_w.append(np.minimum(nz[a_sl][keep], nz[b_sl][keep]))
    a = np.concatenate(eq_a)
    b = np.concatenate(eq_b)
    rhs = np.concatenate(eq_rhs)
    weight = np.concatenate(eq_w)
    n = int(mask.sum())
    log_depth = np.full((h, w), np.nan)
    pieces = np.zeros((h, w), dtype=np.int64)
    if n == 0:
        return log_depth, pieces
    # Normal equations of sum_k w_k (x_b - x_a - g_k)^2 + gauge * sum_i x_i^2.
    m = len(a)
    rows_e = np.concatenate([np.arange(m), np.arange(m)])
    cols_e = np.concatenate([b, a])
    vals_e = np.concatenate([np.ones(m), -np.ones(m)])
    diff = coo_matrix((vals_e, (rows_e, cols_e)), shape=(m, n)).tocsr()
    gauge = GAUGE_WEIGHT * diags(np.ones(n))
    current = weight
    for _ in range(ROBUST_ROUNDS + 1):
        system = (diff.T @ diags(current) @ diff + gauge).tocsc()
        solution = spsolve(system, diff.T @ (current * rhs))
        # Reweighting toward an L1 fit: an unseen depth jump between two neighbours with
        # alike normals then stays one large residual instead of a ramp smeared around it.
        residual = np.abs(diff @ solution - rhs)
        current = weight / np.maximum(residual / ROBUST_SCALE, 1.0)
    log_depth[mask] = solution
    # Pieces: pixels the kept gradients connect (an unconnected pixel is its own piece).
    graph = coo_matrix((np.ones(m), (a, b)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    pieces[mask] = labels + 1
    return log_depth, pieces


def anchor_depth(
    log_depth: np.ndarray,
    pieces: np.ndarray,
    hull_front: np.ndarray,
    trusted: np.ndarray,
    quantile: float,
    min_pixels: int,
) -> np.ndarray:
    """Depth ``(H, W)`` float64 (view units along ``-z_cam``; NaN where not estimated).

    Each piece's constant is the ``quantile`` of ``log(hull_front) - log_depth`` over its
    ``trusted`` pixels (``(H, W)`` bool; ``hull_front`` NaN where the hull is absent): the
    smallest constant that keeps the piece behind the masks' hull, up to outliers. A piece with
    fewer than ``min_pixels`` trusted pixels stays unestimated.
    """
    out = np.full(log_depth.size, np.nan)
    known = np.isfinite(hull_front) & np.isfinite(log_depth) & trusted
    gap = np.full(log_depth.shape, np.nan)
    gap[known] = np.log(hull_front[known]) - log_depth[known]
    flat_pieces = pieces.ravel()
    flat_gap = gap.ravel()
    flat_log = log_depth.ravel()
    order = np.argsort(flat_pieces, kind="stable")
    starts = np.searchsorted(flat_pieces[order], np.arange(1, pieces.max() + 2))
    for piece in range(1, pieces.max() + 1):
        members = order[starts[piece - 1]:starts[piece]]
        gaps = flat_gap[members][np.isfinite(flat_gap[members])]
        if len(gaps) < min_pixels:
            continue
        constant = float(np.quantile(gaps, quantile))
        out[members] = np.exp(flat_log[members] + constant)
    return out.reshape(log_depth.shape)


def downsample_view(
    normals: np.ndarray, mask: np.ndarray, factor: int
) -> tuple[np.ndarray, np.ndarray]:
    """``normals`` ``(T, T, 3)`` and ``mask`` ``(T, T)`` averaged over ``factor``-pixel blocks:
    unit normals ``(T/f, T/f, 3)`` and a mask that keeps blocks fully inside the foreground."""
    t = mask.shape[0] // factor
    blocks = normals[: t * factor, : t * factor].reshape(t, factor, t, factor, 3).sum(axis=(1, 3))
    full = mask[: t * factor, : t * factor].reshape(t, factor, t, factor).all(axis=(1, 3))
    length = np.linalg.norm(blocks, axis=-1, keepdims=True)
    unit = np.where(length > 1e-8, blocks / np.maximum(length, 1e-8), 0.0)
    return unit, full


def point_pixels(
    points: np.ndarray, world_to_cam: np.ndarray, mvp: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For ``points`` ``(P, 3)`` float32 (bundle frame) in one view: depth along ``-z_cam``
    ``(P,)`` float32, flat index ``row * size + col`` of the ``size``-pixel image's pixel each
    projects into ``(P,)`` int64 (-1 outside), and that pixel clamped into the image."""
    cam = points @ world_to_cam[:3, :3].T.astype(np.float32) + world_to_cam[:3, 3]
    clip = points @ mvp[:, :3].T.astype(np.float32) + mvp[:, 3]
    px = (clip[:, 0] / clip[:, 3] + 1.0) * (size / 2.0)
    py = (1.0 - clip[:, 1] / clip[:, 3]) * (size / 2.0)
    # Pixel centres at integers + 0.5 here, so flooring picks the pixel.
    col = np.floor(px).astype(np.int64)
    row = np.floor(py).astype(np.int64)
    inside = (col >= 0) & (col < size) & (row >= 0) & (row < size)
    clamped = np.clip(row, 0, size - 1) * size + np.clip(col, 0, size - 1)
    return -cam[:, 2], np.where(inside, row * size + col, -1), clamped


def hull_front_depth(depth: np.ndarray, pixel: np.ndarray, size: int) -> np.ndarray:
    """The nearest of the given voxels' ``depth`` per pixel, ``(size, size)`` (NaN where none
    projects); ``depth`` and flat ``pixel`` ``(P,)`` from :func:`point_pixels`."""
    inside = pixel >= 0
    front = np.full(size * size, np.inf)
    np.minimum.at(front, pixel[inside], depth[inside])
    # Voxels are about a pixel apart, so a pixel between two front voxels' projections may only
    # receive one from a layer behind: the nearest over 3x3 pixels is the safe (nearer) front.
    front = minimum_filter(front.reshape(size, size), size=3, mode="nearest")
    front[~np.isfinite(front)] = np.nan
    return front


def trusted_pixels(normals: np.ndarray, mask: np.ndarray, erode: int) -> np.ndarray:
    """``(H, W)`` bool: mask pixels whose normal faces the camera and agrees with all four
    neighbours' (no suspected depth jump or grazing surface next to them), shrunk by ``erode``
    pixels: an unseen jump between alike normals (a cup's near rim over its far inner wall)
    bends the integrated depth only near the jump."""
    nz = normals[..., 2]
    good = mask & (nz > GRAZING_MIN_NZ)
    interior = good.copy()
    padded_n = np.pad(normals, ((1, 1), (1, 1), (0, 0)))
    padded_g = np.pad(good, 1)
    h, w = mask.shape
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        other_n = padded_n[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
        other_g = padded_g[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
        interior &= other_g & (np.einsum("ijk,ijk->ij", normals, other_n) > JUMP_MIN_COSINE)
    if erode > 0:
        interior = binary_erosion(interior, iterations=erode, border_value=0)
    return interior


@dataclass
class ViewIntegral:
    """One view's normal map averaged over blocks of pixels and integrated: ``normals``
    ``(L, L, 3)`` camera-space unit normals and ``mask`` ``(L, L)`` bool (blocks fully inside;
    :func:`downsample_view`), ``log_depth`` ``(L, L)`` and ``pieces`` ``(L, L)``
    (:func:`integrate_log_depth`)."""

    normals: np.ndarray
    mask: np.ndarray
    log_depth: np.ndarray
    pieces: np.ndarray


def integrate_views(
    normals: np.ndarray,
    masks: np.ndarray,
    focal_px: float,
    factor: int,
    fronts: list[np.ndarray] | None = None,
) -> list[ViewIntegral]:
    """Each view of ``normals`` ``(N, T, T, 3)`` and ``masks`` ``(N, T, T)`` bool averaged over
    ``factor``-pixel blocks and integrated (``focal_px`` of the ``T``-pixel tiles), cut at the
    steps of ``fronts`` (per view, ``(T/factor, T/factor)``; :func:`mask_hull_fronts`)."""
    integrals = []
    for view in range(len(masks)):
        n_low, m_low = downsample_view(normals[view], masks[view], factor)
        front = fronts[view] if fronts is not None else None
        log_depth, pieces = integrate_log_depth(n_low, m_low, focal_px / factor, front)
        integrals.append(ViewIntegral(n_low, m_low, log_depth, pieces))
    return integrals


def mask_hull_fronts(
    bound: np.ndarray, axis: np.ndarray, world_to_cam: np.ndarray, mvp: np.ndarray, size: int
) -> list[np.ndarray]:
    """Per view, the nearest depth ``(size, size)`` (view units along ``-z_cam``, NaN where
    none) of the masks' hull ``bound`` ``(G, G, G)`` (voxel centres at ``axis``; occupied above
    0.5); ``world_to_cam`` / ``mvp`` ``(N, 4, 4)``."""
    cells = np.flatnonzero(bound.ravel() > 0.5)
    ix, iy, iz = np.unravel_index(cells, bound.shape)
    points = np.stack([axis[ix], axis[iy], axis[iz]], axis=1).astype(np.float32)
    fronts = []
    for view in range(len(mvp)):
        depth, pixel, _ = point_pixels(points, world_to_cam[view], mvp[view], size)
        fronts.append(hull_front_depth(depth, pixel, size))
    return fronts


def carve_factor(tile: int, params: DepthCarveParams) -> int:
    """Pixels per side of the blocks :func:`carve_with_depth` averages ``tile``-px views over:
    at least 2, since a tile's own edge pixels blend with the background."""
    return max(2, tile // params.resolution)


def carve_with_depth(
    occupancy: np.ndarray,
    bound: np.ndarray,
    axis: np.ndarray,
    normals: np.ndarray,
    masks: np.ndarray,
    world_to_cam: np.ndarray,
    mvp: np.ndarray,
    focal_px: float,
    params: DepthCarveParams,
    integrals: list[ViewIntegral] | None = None,
    fronts: list[np.ndarray] | None = None,
) -> np.ndarray:
    """``occupancy`` ``(G, G, G)`` (indexed ``[x, y, z]``, voxel centres at ``axis``) with the
    voxels that lie more than ``params.margin`` in front of some view's integrated depth set
    to 0 (a one-voxel ramp, like the masks'). ``bound`` ``(G, G, G)``: the masks' own hull
    (no rounded corners), which anchors each view's depth. ``normals`` ``(N, T, T, 3)`` camera
    space, ``masks`` ``(N, T, T)`` bool, ``world_to_cam`` / ``mvp`` ``(N, 4, 4)``, ``focal_px``
    of the ``T``-pixel tiles. Views carve in turn; a view's carving is undone when it uncovers
    more than ``params.silhouette_tolerance`` of some view's (shrunk) mask. Tiles smaller than
    :data:`MIN_TILE` are not carved. ``integrals``: the views already integrated at
    :func:`carve_factor` (:func:`models.reconstruct.hull.bundle_integrals`), else they are
    integrated here; ``fronts``: ``bound``'s per view at that size (:func:`mask_hull_fronts`),
    else computed here."""
    tile = masks.shape[1]
    if tile < MIN_TILE:
        return occupancy.copy()
    factor = carve_factor(tile, params)
    low = tile // factor
    inset = max(1, round(params.anchor_inset_px * low / params.resolution))
    step = float(axis[1] - axis[0])
    # Only voxels inside the masks' hull can be occupied or anchor anything.
    cells = np.flatnonzero(bound.ravel() > 0.0)
    ix, iy, iz = np.unravel_index(cells, bound.shape)
    points = np.stack([axis[ix], axis[iy], axis[iz]], axis=1).astype(np.float32)
    values = occupancy.ravel()[cells].copy()
    occupied = values > 0.5
    views = range(len(masks))
    projected = [point_pixels(points, world_to_cam[v], mvp[v], low) for v in views]
    counts = [np.bincount(p[occupied & (p >= 0)], minlength=low * low) for _, p, _ in projected]
    if fronts is None:
        fronts = mask_hull_fronts(bound, axis, world_to_cam, mvp, low)
    if integrals is None:
        integrals = integrate_views(normals, masks, focal_px, factor, fronts)
    inner = [binary_erosion(item.mask, iterations=params.erode_px, border_value=0).ravel()
             for item in integrals]
    for view in views:
        item = integrals[view]
        n_low, m_low, log_depth, pieces = item.normals, item.mask, item.log_depth, item.pieces
        depth, pixel, clamped = projected[view]
        front = fronts[view]
        trusted = trusted_pixels(n_low, m_low, params.erode_px)
        # Next to a silhouette the voxelised hull's front can lie behind the surface (a thin
        # part falls between voxel centres: a Duplo brick's studs), which would push the
        # whole piece back: those pixels do not anchor.
        anchors = trusted & binary_erosion(m_low, iterations=inset, border_value=0)
        estimate = anchor_depth(log_depth, pieces, front, anchors, params.touch_quantile,
                                params.min_pixels)
        estimate[~trusted] = np.nan
        surface = estimate.ravel()[clamped]
        behind = np.where(np.isfinite(surface), surface - params.margin, -np.inf)
        candidate = np.minimum(values, np.clip((depth - behind) / step + 0.5, 0.0, 1.0))
        removed = occupied & (candidate <= 0.5)
        lost = [np.bincount(p[removed & (p >= 0)], minlength=low * low) for _, p, _ in projected]
        if any(_uncovered(c, c_lost, m, low) > params.silhouette_tolerance
               for c, c_lost, m in zip(counts, lost, inner, strict=True)):
            continue
        values = candidate.astype(np.float32)
        occupied &= ~removed
        counts = [c - c_lost for c, c_lost in zip(counts, lost, strict=True)]
    carved = occupancy.copy()
    carved.ravel()[cells] = values
    return carved


def _uncovered(counts: np.ndarray, lost: np.ndarray, mask: np.ndarray, low: int) -> float:
    """Fraction of the covered ``mask`` pixels (flat ``(low * low,)``) that a carving removing
    ``lost`` voxels per pixel would leave uncovered (``counts``: occupied voxels per pixel
    before it). A pixel counts as covered when a voxel projects within one pixel of it: voxels
    are about a pixel apart, so single pixels between projections are not lost surface."""
    before = maximum_filter((counts > 0).reshape(low, low), size=3).ravel() & mask
    after = maximum_filter((counts > lost).reshape(low, low), size=3).ravel() & mask
    return float((before & ~after).sum()) / max(int(before.sum()), 1)
