"""How much of each pixel the object covers, read from a normal tile's blended edge pixels.

The spec's foreground rule (decoded length under 1.35, :func:`models.bundle.spec.
foreground_mask`) calls an edge pixel foreground once the object covers a fifth to a third of
it, depending on the normal there: a supersampled edge pixel holds ``a n + (1 - a) w``, the
object's normal ``n`` blended with white's decoded vector ``w = (-1, 1, 1)`` by its coverage
``a``, and that blend falls under 1.35 long well before ``a`` reaches a half. The binary masks
are therefore a quarter of a 512-px pixel wider than the object on average, and a mesh fitted
to them grows by as much (the apple's refined wall lay 0.0016 bundle units outside it, a
padlock's 0.008; the reference mesh itself matched the masks best scaled by 1.001-1.004).

Solving the blend for ``a``, with ``n`` taken from the fully covered pixels next to the edge,
gives each edge pixel's coverage; the reference mesh then matches the soft masks best at its
own size.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_dilation, binary_erosion

from models.bundle.spec import FOREGROUND_MAX_LENGTH, decode_normals_raw

#: White's decoded vector: the background an edge pixel's normal is blended with.
WHITE = np.array([-1.0, 1.0, 1.0], dtype=np.float32)
#: Pixels per side of the window whose fully covered pixels give an edge pixel's normal.
NORMAL_WINDOW = 5


def edge_coverage(normal_rgb: np.ndarray) -> np.ndarray:
    """Coverage ``(T, T)`` float32 in [0, 1] of one normal tile ``(T, T, 3)`` uint8.

    1 inside the spec's mask (away from its edge), 0 on the background away from it; on the
    pixels next to the mask's edge (on either side), the ``a`` that best explains the pixel as
    ``a n + (1 - a) w`` (least squares, ``n`` the mean normal of the fully covered pixels
    within :data:`NORMAL_WINDOW`). An edge pixel with no fully covered pixel near it (a part
    one or two pixels thin) keeps the spec's 0 or 1.
    """
    raw = decode_normals_raw(normal_rgb)
    length = np.linalg.norm(raw, axis=-1)
    mask = length < FOREGROUND_MAX_LENGTH  # the spec's rule, foreground_mask
    square = np.ones((3, 3), dtype=bool)
    inside = binary_erosion(mask, square, border_value=0)
    edge = binary_dilation(mask, square) & ~inside
    coverage = mask.astype(np.float32)
    rows, cols = np.nonzero(edge)
    if len(rows) == 0:
        return coverage
    # The window's fully covered normals, gathered at the edge pixels only (a few thousand
    # of a tile's quarter million).
    reach = NORMAL_WINDOW // 2
    padded = np.pad(raw, ((reach, reach), (reach, reach), (0, 0)))
    padded_inside = np.pad(inside, reach)
    summed = np.zeros((len(rows), 3), dtype=np.float32)
    for dy in range(NORMAL_WINDOW):
        for dx in range(NORMAL_WINDOW):
            near = padded[rows + dy, cols + dx]
            scale = padded_inside[rows + dy, cols + dx] / np.maximum(
                np.linalg.norm(near, axis=-1), 1e-8)
            summed += near * scale[:, None]
    norm = np.linalg.norm(summed, axis=-1)
    known = norm > 1e-6
    normal = summed[known] / norm[known, None]
    towards = normal - WHITE
    # |n - w|^2 >= 4 - 2 sqrt(3) for a unit n: never near zero.
    alpha = np.einsum("ij,ij->i", raw[rows[known], cols[known]] - WHITE, towards) / np.einsum(
        "ij,ij->i", towards, towards)
    coverage[rows[known], cols[known]] = np.clip(alpha, 0.0, 1.0)
    return coverage


def tile_coverages(normal_tiles: np.ndarray) -> np.ndarray:
    """:func:`edge_coverage` of each tile of ``normal_tiles`` ``(N, T, T, 3)`` uint8:
    ``(N, T, T)`` float32."""
    return np.stack([edge_coverage(tile) for tile in normal_tiles])


__all__ = ["edge_coverage", "tile_coverages"]
