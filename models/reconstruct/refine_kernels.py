"""Compiled CPU kernels of refinement's per-step, gradient-free work.

Each kernel repeats the float32 operations of the torch formula it replaces in
:mod:`models.reconstruct.refine`, in the same order (neighbour sums accumulate in edge order,
as ``index_add`` does), so it returns the same values to the bit: the remesher breaks near-ties
by these values, and a last-bit difference would change the meshes. Inputs are numpy arrays
(float32 positions, int64 edges); outputs are written into caller-provided arrays.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def hidden_from_clip(clip, depth, tol, out):  # pragma: no cover - compiled
    """Mark in ``out`` ``(V,)`` bool the vertices that no view sees.

    ``clip``: ``(B, V, 4)`` float32 clip-space positions; ``depth``: ``(B, R, R)`` float32
    rendered NDC depth; ``tol``: float32 NDC depth tolerance. A vertex is seen in a view when
    its NDC depth is not behind ``depth + tol`` at its nearest pixel (clamped to the image).
    """
    views, nv = clip.shape[0], clip.shape[1]
    res = depth.shape[-1]
    size = np.float32(res)
    one = np.float32(1.0)
    two = np.float32(2.0)
    half = np.float32(0.5)
    for v in range(nv):
        seen = False
        for b in range(views):
            w = clip[b, v, 3]
            x = clip[b, v, 0] / w
            y = clip[b, v, 1] / w
            z = clip[b, v, 2] / w
            px = int(np.rint((x + one) * size / two - half))
            py = int(np.rint((one - y) * size / two - half))
            px = min(max(px, 0), res - 1)
            py = min(max(py, 0), res - 1)
            if z <= depth[b, py, px] + tol:
                seen = True
                break
        out[v] = not seen


@numba.njit(cache=True, nogil=True)
def relax_hidden_into(vertices, edges, hidden, iterations, out):  # pragma: no cover - compiled
    """Jacobi iterations moving ``hidden`` vertices to the mean of their neighbours.

    ``vertices``: ``(V, 3)`` float32; ``edges``: ``(E, 2)`` int64 unique undirected edges;
    ``hidden``: ``(V,)`` bool; the result goes to ``out`` ``(V, 3)`` float32 (other vertices are
    copied unchanged). A hidden vertex becomes ``v - (v - sum / degree)``, the torch formula's
    ``v - uniform_laplacian(v)``, with the sum taken over ``edges[:, 0]`` then ``edges[:, 1]``.
    """
    nv = vertices.shape[0]
    ne = edges.shape[0]
    deg = np.zeros(nv, np.int64)
    for e in range(ne):
        deg[edges[e, 0]] += 1
        deg[edges[e, 1]] += 1
    degree = np.empty(nv, np.float32)
    for v in range(nv):
        degree[v] = np.float32(max(deg[v], 1))
    out[:] = vertices
    acc = np.zeros((nv, 3), np.float32)
    for _ in range(iterations):
        acc[:] = 0
        # Only hidden vertices move, and every sum reads the previous iteration's positions.
        for e in range(ne):
            a, b = edges[e, 0], edges[e, 1]
            if hidden[a]:
                for c in range(3):
                    acc[a, c] += out[b, c]
        for e in range(ne):
            a, b = edges[e, 0], edges[e, 1]
            if hidden[b]:
                for c in range(3):
                    acc[b, c] += out[a, c]
        for v in range(nv):
            if hidden[v]:
                for c in range(3):
                    p = out[v, c]
                    out[v, c] = p - (p - acc[v, c] / degree[v])


@numba.njit(cache=True, nogil=True)
def face_pixel_sums(tri_id, full_index, full_view, full_world, full_square, num_faces,
                    count, summed, squares):  # pragma: no cover - compiled
    """Per (view, face) pixel counts and target sums of the flat-shaded normal loss.

    ``tri_id``: ``(B * R * R,)`` int64 rendered face per pixel (``-1``: none);
    ``full_index`` ``(N,)``, ``full_view`` ``(N,)``, ``full_world`` ``(N, 3)`` float32 and
    ``full_square`` ``(N,)`` float32: the trusted target pixels' flat indices, views, world-frame
    normals and squared norms. Adds, over the trusted pixels a face covers in pixel order, into
    ``count`` ``(B * F,)`` float32 (pixels), ``summed`` ``(B * F, 3)`` float32 (target normals)
    and ``squares`` ``(B,)`` float32 (squared norms); all three must start at zero.
    """
    for i in range(full_index.shape[0]):
        face = tri_id[full_index[i]]
        if face < 0:
            continue
        view = full_view[i]
        slot = view * num_faces + face
        count[slot] += np.float32(1.0)
        for c in range(3):
            summed[slot, c] += full_world[i, c]
        squares[view] += full_square[i]


@numba.njit(cache=True, nogil=True)
def piece_centre_weights(values, piece, pieces, scale_sq, stride, rounds,
                         out):  # pragma: no cover - compiled
    """The final weights of :func:`models.reconstruct.depth_target._piece_constants`.

    ``values``: ``(N,)`` float32 log-depth differences; ``piece``: ``(N,)`` int64 piece ids below
    ``pieces``; ``scale_sq``: float32 squared penalty scale. Each piece's constant starts at
    the median of every ``stride``-th value (the lower middle of its sorted values, 0 for an
    empty piece), then ``rounds`` times becomes the mean weighted by
    ``1 / ((v - c)^2 + s^2)^2``; ``out`` ``(N,)`` float32 receives the weights around the last
    constant. The float32 operations and the sums' order (index order, as ``index_add``) are
    the torch formula's.
    """
    n = values.shape[0]
    sampled = (n + stride - 1) // stride
    counts = np.zeros(pieces, np.int64)
    for j in range(sampled):
        counts[piece[j * stride]] += 1
    starts = np.zeros(pieces, np.int64)
    total = 0
    for p in range(pieces):
        starts[p] = total
        total += counts[p]
    grouped = np.empty(sampled, np.float32)
    fill = starts.copy()
    for j in range(sampled):
        p = piece[j * stride]
        grouped[fill[p]] = values[j * stride]
        fill[p] += 1
    constant = np.zeros(pieces, np.float32)
    for p in range(pieces):
        if counts[p] > 0:
            ordered = np.sort(grouped[starts[p]:starts[p] + counts[p]])
            constant[p] = ordered[(counts[p] - 1) // 2]
    one = np.float32(1.0)
    tiny = np.float32(1e-30)
    summed = np.zeros(pieces, np.float32)
    mass = np.zeros(pieces, np.float32)
    for r in range(rounds + 1):
        summed[:] = 0
        mass[:] = 0
        for i in range(n):
            p = piece[i]
            e = values[i] - constant[p]
            d = e * e + scale_sq
            w = one / (d * d)
            out[i] = w
            if r < rounds:  # the last round's weights are the result: no constant to place
                summed[p] += w * values[i]
                mass[p] += w
        if r < rounds:
            for p in range(pieces):
                constant[p] = summed[p] / max(mass[p], tiny)

