"""Depth from a view's normal map, and space carving with that depth.

A view's camera-space normals give the gradient of the surface's log depth over the image: a
point at pixel offsets ``(u, v)`` from the principal point (``u`` right, ``v`` up, pixels) and
depth ``D`` along the view axis lies at ``(u D / F, v D / F, -D)`` (``F`` the focal length in
pixels), and the normal ``n`` is orthogonal to both image-direction tangents, which gives

    d(log D)/du = n_x / (n_z F - n_x u - n_y v),   d(log D)/dv = n_y / (n_z F - n_x u - n_y v).

Integrating that gradient field over the mask (weighted least squares) gives log depth up to
one constant per connected piece. The visual hull fixes the constant: the object lies inside
the hull, so its visible surface lies at or behind the hull's front surface, and in most views
it touches the hull over a broad band (a can's side, a fruit). The constant is the one at
which most pixels agree with the hull's front; a piece with no broad agreement (a thin part
whose front never touches the hull) is not used.

Voxels clearly in front of that surface in some view are empty: concavities a view sees into
but no silhouette shows (a groove, a fruit's dimple, the round between two views' corners) are
carved from the hull before its surface is extracted. A margin absorbs integration error;
gradients at grazing normals are left out, reweighting keeps an unseen depth jump a single
large residual, and only pixels away from grazing surfaces, creases and the silhouette carve.
A jump between faces that look alike in the normals (a slot whose walls run along the view, a
cup's near rim over its far inner wall) leaves no trace in them: there the depth is wrong
near the jump, which the margin and the trusted-pixel rule only partly cover.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import binary_erosion, minimum_filter
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
#: Weight of the pull toward log depth 0 that fixes each piece's constant before anchoring.
GAUGE_WEIGHT = 1e-6


@dataclass(frozen=True)
class DepthCarveParams:
    """Settings of :func:`carve_with_depth`."""

    resolution: int = 128
    """Pixels per side the normal maps are averaged down to before integrating (128: about
    one hull voxel per pixel at the object's depth)."""
    margin: float = 0.02
    """Bundle units a voxel must lie in front of the integrated surface to be carved (about a
    voxel of the default hull grid): the integrated depth of smooth surfaces (fruit, cans) lies
    within 0.01 of the true depth at most pixels; 0.04 carved too little to help."""
    agree_tolerance: float = 0.005
    """Width in log depth (0.005: about 0.02 bundle units at the cameras' distance) of the
    window of hull agreement that anchors a piece."""
    min_support: float = 0.2
    """Fraction of a piece's pixels that must agree with the hull front for it to be anchored;
    thin objects whose front never touches the hull stay uncarved."""
    min_pixels: int = 100
    """Pieces smaller than this (pixels at ``resolution``) are not anchored."""
    erode_px: int = 2
    """Pixels trusted depth keeps from a suspected jump, a grazing surface or the silhouette."""


def integrate_log_depth(
    normals: np.ndarray, mask: np.ndarray, focal_px: float
) -> tuple[np.ndarray, np.ndarray]:
    """Log depth up to a constant per piece, from one view's normal map.

    ``normals``: ``(H, W, 3)`` camera-space unit normals (x right, y up, z toward the camera);
    ``mask``: ``(H, W)`` bool foreground; ``focal_px``: focal length in pixels of this
    resolution, principal point at the image centre. Returns ``log_depth`` ``(H, W)`` float64
    (NaN outside the mask; depth ``D`` in the view's units along ``-z_cam`` is
    ``exp(log_depth + c)`` with one unknown ``c`` per piece) and ``pieces`` ``(H, W)`` int
    (0 outside, 1.. the pieces the kept gradients connect).
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
    tolerance: float,
    min_support: float,
    min_pixels: int,
) -> np.ndarray:
    """Depth ``(H, W)`` float64 (view units along ``-z_cam``; NaN where not estimated).

    Each piece's constant is the offset at which most of its pixels agree with the hull's
    front depth ``hull_front`` (NaN where the hull is absent): the median of the densest
    window, ``tolerance`` wide in log depth, of ``log(hull_front) - log_depth``. Where the
    object touches its hull over a broad band (a can's side, a fruit), the pixels there agree
    at the true constant; a piece whose densest window holds less than ``min_support`` of its
    pixels, or that has fewer than ``min_pixels`` pixels, stays unestimated: its shape or its
    contact with the hull is too uncertain to carve with (a thin part whose front never
    touches the hull; a box face, which a perspective hull meets only along its edges).
    """
    out = np.full(log_depth.size, np.nan)
    known = np.isfinite(hull_front) & np.isfinite(log_depth)
    gap = np.full(log_depth.shape, np.nan)
    gap[known] = np.log(hull_front[known]) - log_depth[known]
    flat_pieces = pieces.ravel()
    flat_gap = gap.ravel()
    flat_log = log_depth.ravel()
    order = np.argsort(flat_pieces, kind="stable")
    starts = np.searchsorted(flat_pieces[order], np.arange(1, pieces.max() + 2))
    for piece in range(1, pieces.max() + 1):
        members = order[starts[piece - 1]:starts[piece]]
        gaps = np.sort(flat_gap[members][np.isfinite(flat_gap[members])])
        if len(members) < min_pixels or len(gaps) < min_pixels:
            continue
        # Pixels within [g, g + tolerance] for every candidate start g (sorted gaps).
        counts = np.searchsorted(gaps, gaps + tolerance, side="right") - np.arange(len(gaps))
        best = int(np.argmax(counts))
        if counts[best] < min_support * len(members):
            continue
        top = float(np.median(gaps[best:best + counts[best]]))
        out[members] = np.exp(flat_log[members] + top)
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


def view_depths(
    axis: np.ndarray, world_to_cam: np.ndarray, mvp: np.ndarray, tile: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For the voxel centres of the grid ``axis`` ``(G,)`` (bundle frame, indexed ``[x, y, z]``)
    in one view: depth along ``-z_cam`` and pixel column / row in a ``tile``-pixel image
    (centres at integers), each ``(G, G, G)`` float32."""
    def row(m: np.ndarray, r: int) -> np.ndarray:
        m = m.astype(np.float32)
        return (m[r, 0] * axis[:, None, None] + m[r, 1] * axis[None, :, None]
                + m[r, 2] * axis[None, None, :] + m[r, 3])

    depth = -row(world_to_cam, 2)
    w = row(mvp, 3)
    px = (row(mvp, 0) / w + 1.0) * (tile / 2.0) - 0.5
    py = (1.0 - row(mvp, 1) / w) * (tile / 2.0) - 0.5
    return depth, px, py


def hull_front_depth(
    occupied: np.ndarray, depth: np.ndarray, px: np.ndarray, py: np.ndarray, tile: int
) -> np.ndarray:
    """The nearest occupied voxel's depth per pixel ``(tile, tile)`` (NaN where none projects).

    ``occupied`` ``(G, G, G)`` bool; ``depth``, ``px``, ``py`` from :func:`view_depths`."""
    col = np.round(px[occupied]).astype(np.int64)
    row = np.round(py[occupied]).astype(np.int64)
    inside = (col >= 0) & (col < tile) & (row >= 0) & (row < tile)
    front = np.full(tile * tile, np.inf)
    np.minimum.at(front, row[inside] * tile + col[inside], depth[occupied][inside])
    # Voxels are about a pixel apart, so a pixel between two front voxels' projections may only
    # receive one from a layer behind: the nearest over 3x3 pixels is the safe (nearer) front.
    front = minimum_filter(front.reshape(tile, tile), size=3, mode="nearest")
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


def carve_with_depth(
    occupancy: np.ndarray,
    axis: np.ndarray,
    normals: np.ndarray,
    masks: np.ndarray,
    world_to_cam: np.ndarray,
    mvp: np.ndarray,
    focal_px: float,
    params: DepthCarveParams,
) -> np.ndarray:
    """``occupancy`` ``(G, G, G)`` (indexed ``[x, y, z]``, voxel centres at ``axis``) with the
    voxels that lie more than ``params.margin`` in front of some view's integrated depth set
    to 0 (a one-voxel ramp, like the masks'). ``normals`` ``(N, T, T, 3)`` camera space,
    ``masks`` ``(N, T, T)`` bool, ``world_to_cam`` / ``mvp`` ``(N, 4, 4)``, ``focal_px`` of the
    ``T``-pixel tiles. The hull front that anchors each view is read from ``occupancy`` as
    given, before any view carves."""
    tile = masks.shape[1]
    factor = max(1, tile // params.resolution)
    low = tile // factor
    occupied = occupancy > 0.5
    step = float(axis[1] - axis[0])
    carved = occupancy.copy()
    for view in range(len(masks)):
        n_low, m_low = downsample_view(normals[view], masks[view], factor)
        log_depth, pieces = integrate_log_depth(n_low, m_low, focal_px / factor)
        depth, px, py = view_depths(axis, world_to_cam[view], mvp[view], low)
        front = hull_front_depth(occupied, depth, px, py, low)
        estimate = anchor_depth(log_depth, pieces, front, params.agree_tolerance,
                                params.min_support, params.min_pixels)
        estimate[~trusted_pixels(n_low, m_low, params.erode_px)] = np.nan
        col = np.clip(np.round(px), 0, low - 1).astype(np.int64)
        row = np.clip(np.round(py), 0, low - 1).astype(np.int64)
        surface = estimate[row, col]
        behind = np.where(np.isfinite(surface), surface - params.margin, -np.inf)
        np.minimum(carved, np.clip((depth - behind) / step + 0.5, 0.0, 1.0).astype(np.float32),
                   out=carved)
    return carved
