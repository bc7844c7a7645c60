"""Compiled CPU passes of the depth term (:func:`models.reconstruct.depth_target.depth_loss`)
with its gradient written out by hand.

Unlike :mod:`models.reconstruct.refine_kernels`, these do not repeat a torch formula's
operations in its order: the value and the gradient equal the torch formula's up to float32
rounding of their sums (a test compares both with a float64 evaluation). Inputs are numpy
arrays; outputs are written into caller-provided arrays.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def depth_differences(clip_w, faces, tri_id, bary, index, log_depth, piece, tile_pixels,
                      covered, depth, difference, covered_piece):  # pragma: no cover - compiled
    """The depth term's per-pixel log-depth differences, over the target pixels a face covers.

    ``clip_w``: ``(B, V)`` float32 clip-space ``w`` (depth along the view axis); ``faces``
    ``(F, 3)`` int64; ``tri_id`` ``(B * R * R,)`` int64 and ``bary`` ``(B * R * R, 3)`` float32,
    the rasterisation flattened; ``index``, ``log_depth``, ``piece`` ``(M,)``: the targets'
    flat pixels, integrated log depths and piece ids; ``tile_pixels`` ``R * R``. Writes, for
    the ``n`` covered targets in target order, their pixel into ``covered``, the interpolated
    depth (at least 1e-6) into ``depth``, ``log(depth) - log_depth`` into ``difference`` and the
    piece into ``covered_piece`` (all ``(M,)``), and returns ``n``.
    """
    n = 0
    floor = np.float32(1e-6)
    for m in range(index.shape[0]):
        pixel = index[m]
        face = tri_id[pixel]
        if face < 0:
            continue
        view = pixel // tile_pixels
        value = np.float32(0.0)
        for k in range(3):
            value += bary[pixel, k] * clip_w[view, faces[face, k]]
        value = max(value, floor)
        covered[n] = pixel
        depth[n] = value
        difference[n] = np.log(value) - log_depth[m]
        covered_piece[n] = piece[m]
        n += 1
    return n


@numba.njit(cache=True, nogil=True)
def bounded_penalty(difference, weight, piece, pieces, scale_sq,
                    slope):  # pragma: no cover - compiled
    """The depth term's value and its derivative by each difference.

    ``difference``, ``weight`` ``(N,)`` float32 and ``piece`` ``(N,)`` int64: each piece's
    constant is the ``weight``-ed mean of its differences (the weights held fixed), a residual
    ``e`` costs ``e^2 / (e^2 + s^2)`` with ``scale_sq`` ``s^2``, and the value is the mean cost.
    Writes ``d value / d difference`` (through the residual and through its piece's
    constant) into ``slope`` ``(N,)`` float32 and returns the value (float64).
    """
    n = difference.shape[0]
    summed = np.zeros(pieces, np.float32)
    mass = np.zeros(pieces, np.float32)
    for i in range(n):
        summed[piece[i]] += weight[i] * difference[i]
        mass[piece[i]] += weight[i]
    for p in range(pieces):
        mass[p] = max(mass[p], np.float32(1e-30))
        summed[p] = summed[p] / mass[p]  # now the constant
    total = 0.0
    pushed = np.zeros(pieces, np.float32)  # per piece: the sum of its residuals' slopes
    per_pixel = np.float32(1.0 / n)
    two = np.float32(2.0)
    for i in range(n):
        e = difference[i] - summed[piece[i]]
        square = e * e
        bound = square + scale_sq
        total += square / bound
        g = two * e * scale_sq / (bound * bound) * per_pixel
        slope[i] = g
        pushed[piece[i]] += g
    # Moving one difference moves its piece's constant by weight / mass, and so every residual
    # of the piece the other way.
    for i in range(n):
        p = piece[i]
        slope[i] -= weight[i] / mass[p] * pushed[p]
    return total / n


@numba.njit(cache=True, nogil=True)
def scatter_depth_slope(slope, depth, covered, faces, tri_id, bary, tile_pixels,
                        grad_w):  # pragma: no cover - compiled
    """Add ``d value / d clip_w`` into ``grad_w`` ``(B, V)`` float32 (starting at zero), from
    :func:`bounded_penalty`'s ``slope`` and :func:`depth_differences`' ``depth`` and
    ``covered`` (first ``N`` entries); ``faces``, ``tri_id``, ``bary`` as there. A depth held
    at its 1e-6 floor passes no gradient, as a clamp does."""
    floor = np.float32(1e-6)
    for i in range(slope.shape[0]):
        pixel = covered[i]
        view = pixel // tile_pixels
        face = tri_id[pixel]
        if depth[i] <= floor:
            continue
        by_depth = slope[i] / depth[i]
        for k in range(3):
            grad_w[view, faces[face, k]] += by_depth * bary[pixel, k]
