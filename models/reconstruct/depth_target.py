"""A depth term for refinement: the shape each view's normal map integrates to.

Normal and silhouette losses leave one freedom on a round wall no silhouette bounds: a can or
a cup seen from 4 views at 90 degrees has its diagonals pinned by no contour, and the normal
at the diagonal itself points along it whatever the radius. The fine phase grows a bulge there
(cup 065-b: radius 0.76-0.79 against 0.73). The normal map integrates to log depth up to one
constant per connected piece (:func:`models.reconstruct.depth.integrate_log_depth`), and that
integrated shape does pin the diagonal: on cup 065-b its median error over the trusted pixels
is 0.006 bundle units, where the refined mesh's errors at the diagonals reach 0.04-0.09.

The term compares, per trusted pixel, the rendered log depth with the integrated one after
removing each piece's robust centre of the differences (the unknown constant, re-read every
step from the current mesh), under a bounded penalty: where the integration is wrong (an
unseen jump, a crease) the residual is large and its gradient vanishes instead of pulling the
mesh.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.bundle.spec import Bundle
from models.reconstruct.depth import trusted_pixels
from models.reconstruct.depth_loss_kernels import (
    bounded_penalty,
    depth_differences,
    scatter_depth_slope,
)
from models.reconstruct.hull import bundle_integrals
from models.reconstruct.refine_kernels import piece_centre_weights

#: Pixels per side the normal maps are integrated at: 0.35 s for a 512-px bundle's 4 views
#: (2.5 s at 256); the integral is smooth, and finer render pixels read it by nearest lookup.
INTEGRATE_RESOLUTION = 128
#: Pixels (at the integration resolution) trusted depth keeps from a suspected jump, a grazing
#: surface or the silhouette.
TRUST_ERODE_PX = 2
#: Only pixels whose target normal faces the camera at least this much (camera-space ``n_z``)
#: are compared: integration error grows toward grazing surfaces (a cube's narrow face seen at
#: 70 degrees lies 0.05 off), while a round wall's diagonals face the views at 45 degrees
#: (``n_z`` 0.71).
MIN_FACING = 0.5
#: Pieces with fewer trusted pixels than this (at the loss resolution) take no part.
MIN_PIECE_PIXELS = 64

#: Reweighted-mean rounds that move a piece's constant from its median to the penalty's centre.
CENTRE_ROUNDS = 3
#: Every this many covered pixels are read for a piece's median.
MEDIAN_STRIDE = 8


@dataclass
class DepthTargets:
    """Integrated log depth at one render resolution, for the trusted pixels only.

    ``index`` ``(N,)`` int64: flat indices into a ``(4, R, R)`` image; ``log_depth`` ``(N,)``
    float32: log of the depth along ``-z_cam`` up to one constant per piece; ``piece`` ``(N,)``
    int64: ``0..P-1`` over all views (a piece never spans two views); ``pieces``: ``P``.
    """

    index: torch.Tensor
    log_depth: torch.Tensor
    piece: torch.Tensor
    pieces: int


def depth_targets(bundle: Bundle, resolution: int, device: torch.device) -> DepthTargets:
    """``bundle``'s integrated log depth at ``resolution`` pixels per side.

    The normal maps are integrated at :data:`INTEGRATE_RESOLUTION` pixels (or the tile's, if
    smaller; the integration is shared with the hull's depth carving,
    :func:`models.reconstruct.hull.bundle_integrals`).

    Each render pixel reads the integration pixel its centre falls in (both grids span the
    same image). Taking only one render pixel per integration pixel would cost a quarter of
    the term's time, but lost 0.011 of median F@0.05 over the 78 YCB objects (plate -0.033,
    toy airplane 072-b -0.015, hammer -0.012).
    """
    factor = max(1, bundle.tile // INTEGRATE_RESOLUTION)
    index, values, piece_ids = [], [], []
    next_piece = 0
    for view, item in enumerate(bundle_integrals(bundle, factor)):
        low = item.log_depth.shape[0]
        trusted = (trusted_pixels(item.normals, item.mask, TRUST_ERODE_PX)
                   & (item.normals[..., 2] > MIN_FACING))
        lookup = np.minimum((np.arange(resolution) + 0.5) * low / resolution,
                            low - 1).astype(int)
        rows, cols = np.nonzero(trusted[lookup][:, lookup])
        low_rows, low_cols = lookup[rows], lookup[cols]
        labels = item.pieces[low_rows, low_cols]
        keep = np.zeros(len(labels), dtype=bool)
        remap = np.full(int(item.pieces.max()) + 1, -1, dtype=np.int64)
        for label, count in zip(*np.unique(labels, return_counts=True), strict=True):
            if count >= MIN_PIECE_PIXELS:
                remap[label] = next_piece
                next_piece += 1
                keep |= labels == label
        rows, cols, low_rows, low_cols = rows[keep], cols[keep], low_rows[keep], low_cols[keep]
        index.append(view * resolution * resolution + rows * resolution + cols)
        values.append(item.log_depth[low_rows, low_cols])
        piece_ids.append(remap[labels[keep]])
    return DepthTargets(
        index=torch.from_numpy(np.concatenate(index).astype(np.int64)).to(device),
        log_depth=torch.from_numpy(np.concatenate(values).astype(np.float32)).to(device),
        piece=torch.from_numpy(np.concatenate(piece_ids).astype(np.int64)).to(device),
        pieces=next_piece,
    )


def depth_loss(
    clip: torch.Tensor,
    faces: torch.Tensor,
    tri_id: torch.Tensor,
    bary: torch.Tensor,
    targets: DepthTargets,
    scale: float,
) -> torch.Tensor:
    """Bounded log-depth error over the targets' pixels, a scalar in ``[0, 1)``.

    ``clip`` ``(4, V, 4)`` clip-space vertices (``w`` is the depth along ``-z_cam``), ``faces``
    ``(F, 3)``, ``tri_id`` ``(4, R, R)`` and ``bary`` ``(4, R, R, 3)`` of their rasterisation.
    Each piece's constant is the robust centre of its pixels' differences
    (:func:`_piece_constants`); a residual ``e`` costs ``e^2 / (e^2 + scale^2)`` (``scale`` in
    log depth: 0.01 is about 0.045 bundle units at the cameras' distance), averaged over the
    pixels the mesh covers.
    """
    if targets.pieces == 0:
        return clip.new_zeros(())
    if clip.device.type == "cpu" and clip.dtype == bary.dtype == torch.float32:
        # Compiled forward and backward passes: the torch formula below is about 15 operations
        # a step over every covered pixel, forward and back (0.4 s of a 512-px mug's fine phase).
        return _CompiledDepthLoss.apply(clip[..., 3], faces, tri_id, bary, targets, scale)
    tri = tri_id.reshape(-1)[targets.index]
    covered = (tri >= 0).nonzero(as_tuple=True)[0]
    if covered.numel() == 0:
        return clip.new_zeros(())
    pixel = targets.index[covered]
    view = torch.div(pixel, tri_id.shape[1] * tri_id.shape[2], rounding_mode="floor")
    corner_w = clip[view[:, None], faces[tri[covered]], 3]  # (N, 3)
    depth = (bary.reshape(-1, 3)[pixel].detach() * corner_w).sum(-1).clamp_min(1e-6)
    difference = depth.log() - targets.log_depth[covered]
    piece = targets.piece[covered]
    constant = _piece_constants(difference, piece, targets.pieces, scale)
    residual = difference - constant[piece]
    square = residual.square()
    return (square / (square + scale * scale)).mean()


class _CompiledDepthLoss(torch.autograd.Function):
    """:func:`depth_loss` of float32 CPU tensors in compiled passes (:mod:`depth_loss_kernels`):
    the same formula and gradient as its torch code (other devices and dtypes), up to float32
    rounding of the sums."""

    @staticmethod
    def forward(ctx, clip_w, faces, tri_id, bary, targets, scale):  # noqa: D102
        tiles = tri_id.shape[0]
        tile_pixels = tri_id.shape[1] * tri_id.shape[2]
        w = np.ascontiguousarray(clip_w.detach().numpy())
        face_index = np.ascontiguousarray(faces.numpy(), dtype=np.int64)
        flat_tri = np.ascontiguousarray(tri_id.reshape(-1).numpy(), dtype=np.int64)
        flat_bary = np.ascontiguousarray(bary.detach().reshape(-1, 3).numpy())
        size = targets.index.shape[0]
        covered = np.empty(size, np.int64)
        depth = np.empty(size, np.float32)
        difference = np.empty(size, np.float32)
        piece = np.empty(size, np.int64)
        n = depth_differences(w, face_index, flat_tri, flat_bary, targets.index.numpy(),
                              targets.log_depth.numpy(), targets.piece.numpy(), tile_pixels,
                              covered, depth, difference, piece)
        if n == 0:
            ctx.empty = True
            ctx.shape = (tiles, w.shape[1])
            return clip_w.new_zeros(())
        difference, piece = difference[:n], piece[:n]
        weight = _compiled_centre_weights(difference, piece, int(targets.pieces), scale)
        slope = np.empty(n, np.float32)
        value = bounded_penalty(difference, weight, piece, int(targets.pieces),
                                np.float32(scale * scale), slope)
        ctx.empty = False
        ctx.saved = (slope, depth[:n], covered[:n], face_index, flat_tri, flat_bary,
                     tile_pixels, (tiles, w.shape[1]))
        return torch.tensor(value, dtype=torch.float32)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        if ctx.empty:
            return torch.zeros(ctx.shape), None, None, None, None, None
        slope, depth, covered, faces, tri, bary, tile_pixels, shape = ctx.saved
        grad_w = np.zeros(shape, np.float32)
        scatter_depth_slope(slope, depth, covered, faces, tri, bary, tile_pixels, grad_w)
        return torch.from_numpy(grad_w) * grad, None, None, None, None, None


def _piece_constants(
    difference: torch.Tensor, piece: torch.Tensor, pieces: int, scale: float
) -> torch.Tensor:
    """``(P,)``: each piece's constant, the robust centre of its ``difference`` ``(N,)``.

    Reweighted means from the median (weights of the bounded penalty, no gradient), then one
    weighted mean that keeps its gradient. The gradient matters: with the constant held fixed,
    a piece whose residuals are lopsided gets a net push along the view axis that the next
    step's constant follows, and the surface drifts without bound (a box's face moved 0.08
    back in 40 steps). Through the weighted mean the gradients of a piece sum to zero along
    that shift.
    """
    weight = _final_weights(difference.detach(), piece, pieces, scale)
    return _piece_mean(difference, weight, piece, pieces)


@torch.no_grad()
def _final_weights(
    values: torch.Tensor, piece: torch.Tensor, pieces: int, scale: float
) -> torch.Tensor:
    """``(N,)``: the penalty's weights around each piece's robust centre of ``values``."""
    if values.device.type == "cpu" and values.dtype == torch.float32:
        # One compiled pass per round instead of a dozen torch operations (the costliest part
        # of the term on the CPU); the same float32 operations, so the same weights.
        return torch.from_numpy(_compiled_centre_weights(
            np.ascontiguousarray(values.numpy()),
            np.ascontiguousarray(piece.numpy(), dtype=np.int64), int(pieces), scale))
    return _final_weights_torch(values, piece, pieces, scale)


def _compiled_centre_weights(
    values: np.ndarray, piece: np.ndarray, pieces: int, scale: float
) -> np.ndarray:
    """:func:`_final_weights` of contiguous float32 ``values`` and int64 ``piece`` ``(N,)``,
    by :func:`refine_kernels.piece_centre_weights`."""
    weight = np.empty(values.shape[0], np.float32)
    piece_centre_weights(values, piece, pieces, np.float32(scale * scale), MEDIAN_STRIDE,
                         CENTRE_ROUNDS, weight)
    return weight


def _final_weights_torch(
    values: torch.Tensor, piece: torch.Tensor, pieces: int, scale: float
) -> torch.Tensor:
    """:func:`_final_weights` in torch, on any device."""
    # Every few pixels is enough to place a piece's median; sorting all of them would cost as
    # much as the rest of the term.
    constant = _piece_medians(values[::MEDIAN_STRIDE], piece[::MEDIAN_STRIDE], pieces)
    for _ in range(CENTRE_ROUNDS):
        weight = _centre_weights(values - constant[piece], scale)
        constant = _piece_mean(values, weight, piece, pieces)
    return _centre_weights(values - constant[piece], scale)


def _centre_weights(residual: torch.Tensor, scale: float) -> torch.Tensor:
    """Weights whose weighted mean is the centre of the penalty ``e^2 / (e^2 + s^2)``: its
    slope divided by ``e``, up to a constant factor."""
    return 1.0 / (residual.square() + scale * scale).square()


def _piece_mean(
    values: torch.Tensor, weight: torch.Tensor, piece: torch.Tensor, pieces: int
) -> torch.Tensor:
    """``(P,)``: the ``weight``-ed mean of ``values`` over each piece (0 for an empty one)."""
    total = torch.zeros(pieces, dtype=values.dtype, device=values.device)
    summed = total.index_add(0, piece, weight * values)
    mass = total.index_add(0, piece, weight)
    return summed / mass.clamp_min(1e-30)


def _piece_medians(values: torch.Tensor, piece: torch.Tensor, pieces: int) -> torch.Tensor:
    """``(P,)``: the median of ``values`` ``(N,)`` over each piece (0 for an empty piece)."""
    order = torch.argsort(values, stable=True)
    order = order[torch.argsort(piece[order], stable=True)]  # by piece, then value
    counts = torch.bincount(piece, minlength=pieces)
    starts = torch.cumsum(counts, 0) - counts
    middle = (starts + (counts - 1).clamp_min(0) // 2).clamp_max(max(values.numel() - 1, 0))
    medians = values[order][middle]
    return torch.where(counts > 0, medians, torch.zeros_like(medians))
