"""numba kernels of the CPU rasteriser: coverage, barycentrics, interpolation, anti-aliasing.

Imported lazily by :mod:`models.raster.cpu` (compiling is cached on disk). Every
differentiable kernel has a hand-written backward; the formulas are derived in the comments
and checked against torch autograd of :mod:`models.raster.cpu`'s reference implementation.

Conventions: ``clip`` ``(B, V, 4)`` float32 OpenGL clip space; ``faces`` ``(F, 3)`` int64;
``tri`` ``(B, H, W)`` int64 (-1 empty); pixel ``(i, j)`` (column, row from the top) has its
centre at ``x = 2(i+0.5)/W - 1``, ``y = 1 - 2(j+0.5)/H`` in NDC. For a pixel
``p = (x, y, 1)`` and vertices ``c_k = (x_k, y_k, w_k)``, the perspective-correct
barycentrics are ``b_k = u_k / sum(u)`` with ``u_k = p . (c_{k+1} x c_{k+2})``.
"""

from __future__ import annotations

import math

import numba
import numpy as np

#: Vertices with clip ``w`` at or below this are behind the camera; coverage skips their faces.
MIN_W = 1e-6


@numba.njit(cache=True, nogil=True)
def cover(clip, faces, height, width, tri_id, zbuf):
    """Z-buffered coverage: writes ``tri_id`` (init -1) and ``zbuf`` (init +inf), both windings."""
    nb = clip.shape[0]
    nf = faces.shape[0]
    hw = 0.5 * width
    hh = 0.5 * height
    for b in range(nb):
        for f in range(nf):
            a0, a1, a2 = faces[f, 0], faces[f, 1], faces[f, 2]
            w0 = np.float64(clip[b, a0, 3])
            w1 = np.float64(clip[b, a1, 3])
            w2 = np.float64(clip[b, a2, 3])
            if w0 <= MIN_W or w1 <= MIN_W or w2 <= MIN_W:
                continue
            # pixel units: column px = (x+1)W/2 - 0.5, row py = (1-y)H/2 - 0.5
            x0 = (clip[b, a0, 0] / w0 + 1.0) * hw - 0.5
            x1 = (clip[b, a1, 0] / w1 + 1.0) * hw - 0.5
            x2 = (clip[b, a2, 0] / w2 + 1.0) * hw - 0.5
            y0 = (1.0 - clip[b, a0, 1] / w0) * hh - 0.5
            y1 = (1.0 - clip[b, a1, 1] / w1) * hh - 0.5
            y2 = (1.0 - clip[b, a2, 1] / w2) * hh - 0.5
            z0 = clip[b, a0, 2] / w0
            z1 = clip[b, a1, 2] / w1
            z2 = clip[b, a2, 2] / w2
            i0 = max(int(math.ceil(min(x0, x1, x2))), 0)
            i1 = min(int(math.floor(max(x0, x1, x2))), width - 1)
            if i0 > i1:
                continue
            j0 = max(int(math.ceil(min(y0, y1, y2))), 0)
            j1 = min(int(math.floor(max(y0, y1, y2))), height - 1)
            if j0 > j1:
                continue
            area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
            if area == 0.0:
                continue
            inv = 1.0 / area
            for j in range(j0, j1 + 1):
                py = np.float64(j)
                for i in range(i0, i1 + 1):
                    px = np.float64(i)
                    e0 = ((x2 - x1) * (py - y1) - (y2 - y1) * (px - x1)) * inv
                    if e0 < 0.0:
                        continue
                    e1 = ((x0 - x2) * (py - y2) - (y0 - y2) * (px - x2)) * inv
                    if e1 < 0.0:
                        continue
                    e2 = 1.0 - e0 - e1
                    if e2 < 0.0:
                        continue
                    z = e0 * z0 + e1 * z1 + e2 * z2
                    if z < -1.0 or z > 1.0:
                        continue
                    if z < zbuf[b, j, i]:
                        zbuf[b, j, i] = z
                        tri_id[b, j, i] = f


@numba.njit(cache=True, nogil=True, inline="always")
def _cross(ax, ay, az, bx, by, bz):
    return ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx


@numba.njit(cache=True, nogil=True)
def bary_forward(clip, faces, tri, bary, depth):
    """Barycentrics ``(B, H, W, 3)`` (0 on empty) and NDC depth ``(B, H, W)`` (1 on empty)."""
    nb, h, w = tri.shape
    for b in range(nb):
        for j in range(h):
            py = 1.0 - (2.0 * j + 1.0) / h
            for i in range(w):
                f = tri[b, j, i]
                if f < 0:
                    continue
                px = (2.0 * i + 1.0) / w - 1.0
                v0, v1, v2 = faces[f, 0], faces[f, 1], faces[f, 2]
                x0, y0, w0 = (
                    np.float64(clip[b, v0, 0]),
                    np.float64(clip[b, v0, 1]),
                    np.float64(clip[b, v0, 3]),
                )
                x1, y1, w1 = (
                    np.float64(clip[b, v1, 0]),
                    np.float64(clip[b, v1, 1]),
                    np.float64(clip[b, v1, 3]),
                )
                x2, y2, w2 = (
                    np.float64(clip[b, v2, 0]),
                    np.float64(clip[b, v2, 1]),
                    np.float64(clip[b, v2, 3]),
                )
                # u_k = p . (c_{k+1} x c_{k+2}) = det[p, c_{k+1}, c_{k+2}]
                u0 = px * (y1 * w2 - w1 * y2) + py * (w1 * x2 - x1 * w2) + (x1 * y2 - y1 * x2)
                u1 = px * (y2 * w0 - w2 * y0) + py * (w2 * x0 - x2 * w0) + (x2 * y0 - y2 * x0)
                u2 = px * (y0 * w1 - w0 * y1) + py * (w0 * x1 - x0 * w1) + (x0 * y1 - y0 * x1)
                s = u0 + u1 + u2
                if s == 0.0:
                    continue
                b0, b1, b2 = u0 / s, u1 / s, u2 / s
                bary[b, j, i, 0] = b0
                bary[b, j, i, 1] = b1
                bary[b, j, i, 2] = b2
                zz = b0 * clip[b, v0, 2] + b1 * clip[b, v1, 2] + b2 * clip[b, v2, 2]
                ww = b0 * w0 + b1 * w1 + b2 * w2
                depth[b, j, i] = zz / ww


@numba.njit(cache=True, nogil=True)
def bary_backward(clip, faces, tri, bary, depth, g_bary, g_depth, g_clip):
    """Accumulate d(loss)/d(clip) ``(B, V, 4)`` float64 from the grads of bary and depth.

    With ``b = u / s``: ``du_j = (gb_j - sum_k gb_k b_k) / s``. Depth ``d = Z / W`` with
    ``Z = sum b_k z_k``, ``W = sum b_k w_k`` adds ``gd (z_k - d w_k) / W`` to ``gb_k`` and
    gives ``dz_k = gd b_k / W``, ``dw_k = -gd d b_k / W``. From ``u_0 = p . (c_1 x c_2)``:
    ``du_0/dc_1 = c_2 x p`` and ``du_0/dc_2 = p x c_1`` (cyclically for ``u_1``, ``u_2``).
    """
    nb, h, w = tri.shape
    for b in range(nb):
        for j in range(h):
            py = 1.0 - (2.0 * j + 1.0) / h
            for i in range(w):
                f = tri[b, j, i]
                if f < 0:
                    continue
                px = (2.0 * i + 1.0) / w - 1.0
                gd = np.float64(g_depth[b, j, i])
                gb0 = np.float64(g_bary[b, j, i, 0])
                gb1 = np.float64(g_bary[b, j, i, 1])
                gb2 = np.float64(g_bary[b, j, i, 2])
                if gd == 0.0 and gb0 == 0.0 and gb1 == 0.0 and gb2 == 0.0:
                    continue
                v0, v1, v2 = faces[f, 0], faces[f, 1], faces[f, 2]
                x0, y0, w0 = (
                    np.float64(clip[b, v0, 0]),
                    np.float64(clip[b, v0, 1]),
                    np.float64(clip[b, v0, 3]),
                )
                x1, y1, w1 = (
                    np.float64(clip[b, v1, 0]),
                    np.float64(clip[b, v1, 1]),
                    np.float64(clip[b, v1, 3]),
                )
                x2, y2, w2 = (
                    np.float64(clip[b, v2, 0]),
                    np.float64(clip[b, v2, 1]),
                    np.float64(clip[b, v2, 3]),
                )
                z0, z1, z2 = (
                    np.float64(clip[b, v0, 2]),
                    np.float64(clip[b, v1, 2]),
                    np.float64(clip[b, v2, 2]),
                )
                u0 = px * (y1 * w2 - w1 * y2) + py * (w1 * x2 - x1 * w2) + (x1 * y2 - y1 * x2)
                u1 = px * (y2 * w0 - w2 * y0) + py * (w2 * x0 - x2 * w0) + (x2 * y0 - y2 * x0)
                u2 = px * (y0 * w1 - w0 * y1) + py * (w0 * x1 - x0 * w1) + (x0 * y1 - y0 * x1)
                s = u0 + u1 + u2
                if s == 0.0:
                    continue
                b0, b1, b2 = u0 / s, u1 / s, u2 / s
                if gd != 0.0:
                    ww = b0 * w0 + b1 * w1 + b2 * w2
                    d = (b0 * z0 + b1 * z1 + b2 * z2) / ww
                    k = gd / ww
                    gb0 += k * (z0 - d * w0)
                    gb1 += k * (z1 - d * w1)
                    gb2 += k * (z2 - d * w2)
                    g_clip[b, v0, 2] += k * b0
                    g_clip[b, v1, 2] += k * b1
                    g_clip[b, v2, 2] += k * b2
                    g_clip[b, v0, 3] -= k * d * b0
                    g_clip[b, v1, 3] -= k * d * b1
                    g_clip[b, v2, 3] -= k * d * b2
                dot = gb0 * b0 + gb1 * b1 + gb2 * b2
                gu0 = (gb0 - dot) / s
                gu1 = (gb1 - dot) / s
                gu2 = (gb2 - dot) / s
                # grad c0 = gu1 (p x c2) + gu2 (c1 x p)
                ax, ay, az = _cross(px, py, 1.0, x2, y2, w2)
                bx, by, bz = _cross(x1, y1, w1, px, py, 1.0)
                g_clip[b, v0, 0] += gu1 * ax + gu2 * bx
                g_clip[b, v0, 1] += gu1 * ay + gu2 * by
                g_clip[b, v0, 3] += gu1 * az + gu2 * bz
                # grad c1 = gu0 (c2 x p) + gu2 (p x c0)
                ax, ay, az = _cross(x2, y2, w2, px, py, 1.0)
                bx, by, bz = _cross(px, py, 1.0, x0, y0, w0)
                g_clip[b, v1, 0] += gu0 * ax + gu2 * bx
                g_clip[b, v1, 1] += gu0 * ay + gu2 * by
                g_clip[b, v1, 3] += gu0 * az + gu2 * bz
                # grad c2 = gu0 (p x c1) + gu1 (c0 x p)
                ax, ay, az = _cross(px, py, 1.0, x1, y1, w1)
                bx, by, bz = _cross(x0, y0, w0, px, py, 1.0)
                g_clip[b, v2, 0] += gu0 * ax + gu1 * bx
                g_clip[b, v2, 1] += gu0 * ay + gu1 * by
                g_clip[b, v2, 3] += gu0 * az + gu1 * bz


@numba.njit(cache=True, nogil=True)
def interp_forward(attr, faces, tri, bary, out):
    """``out[b, j, i] = sum_k bary_k attr[b or 0, faces[tri, k]]``; ``attr`` ``(1 or B, V, C)``."""
    nb, h, w = tri.shape
    nc = attr.shape[2]
    shared = attr.shape[0] == 1
    for b in range(nb):
        ab = 0 if shared else b
        for j in range(h):
            for i in range(w):
                f = tri[b, j, i]
                if f < 0:
                    continue
                v0, v1, v2 = faces[f, 0], faces[f, 1], faces[f, 2]
                b0, b1, b2 = bary[b, j, i, 0], bary[b, j, i, 1], bary[b, j, i, 2]
                for c in range(nc):
                    out[b, j, i, c] = (
                        b0 * attr[ab, v0, c] + b1 * attr[ab, v1, c] + b2 * attr[ab, v2, c]
                    )


@numba.njit(cache=True, nogil=True)
def interp_backward(attr, faces, tri, bary, g_out, g_attr, g_bary, need_attr, need_bary):
    """Grads of :func:`interp_forward`: ``g_attr`` (float64, attr's shape), ``g_bary``."""
    nb, h, w = tri.shape
    nc = attr.shape[2]
    shared = attr.shape[0] == 1
    for b in range(nb):
        ab = 0 if shared else b
        for j in range(h):
            for i in range(w):
                f = tri[b, j, i]
                if f < 0:
                    continue
                v0, v1, v2 = faces[f, 0], faces[f, 1], faces[f, 2]
                b0, b1, b2 = bary[b, j, i, 0], bary[b, j, i, 1], bary[b, j, i, 2]
                s0 = 0.0
                s1 = 0.0
                s2 = 0.0
                for c in range(nc):
                    g = np.float64(g_out[b, j, i, c])
                    if need_attr:
                        g_attr[ab, v0, c] += b0 * g
                        g_attr[ab, v1, c] += b1 * g
                        g_attr[ab, v2, c] += b2 * g
                    s0 += g * attr[ab, v0, c]
                    s1 += g * attr[ab, v1, c]
                    s2 += g * attr[ab, v2, c]
                if need_bary:
                    g_bary[b, j, i, 0] = s0
                    g_bary[b, j, i, 1] = s1
                    g_bary[b, j, i, 2] = s2


@numba.njit(cache=True, nogil=True, inline="always")
def _winding(clip, faces, b, f):
    # sign of det[c0, c1, c2] with c = (x, y, w): the face's winding on screen
    v0, v1, v2 = faces[f, 0], faces[f, 1], faces[f, 2]
    x0, y0, w0 = clip[b, v0, 0], clip[b, v0, 1], clip[b, v0, 3]
    x1, y1, w1 = clip[b, v1, 0], clip[b, v1, 1], clip[b, v1, 3]
    x2, y2, w2 = clip[b, v2, 0], clip[b, v2, 1], clip[b, v2, 3]
    det = x0 * (y1 * w2 - w1 * y2) + y0 * (w1 * x2 - x1 * w2) + w0 * (x1 * y2 - y1 * x2)
    return det > 0.0


#: Faces walked from the front pixel's triangle toward the other pixel in search of the
#: silhouette edge (small triangles often sit between a pixel centre and the silhouette).
MAX_WALK = 16
#: Pixels (screen units) by which a silhouette edge's screen box is widened when marking the
#: pixel pairs worth walking. A walk records an edge it crosses within one pixel of its start
#: (the front pixel), and the pair's first pixel is at most one pixel from that: two pixels;
#: the third covers rounding of the crossing's parameter.
NEAR_EDGE_PIXELS = 3.0


@numba.njit(cache=True, nogil=True)
def silhouette_pairs(clip, faces, neigh, tri, depth, cap):
    """Every adjacent pixel pair that a silhouette edge separates, with where it crosses.

    From the front pixel's centre (smaller depth; covered beats empty) toward the other
    pixel's centre, the segment is followed through its triangle and, across non-silhouette
    edges, up to ``MAX_WALK`` faces; the first silhouette edge it leaves through (a boundary
    edge or one between faces of opposite screen winding) is recorded if it is crossed before
    the other centre. Horizontal pairs handle edges steeper than 45 degrees on screen,
    vertical pairs the others. Returns ``(front, back, face, edge, t)``: flat pixel indices
    over the batch, the face owning the edge, the corner opposite it, and the fraction
    ``t`` in [0, 1] of the way from the front centre where the edge crosses. ``cap`` bounds
    the number of pairs (the count of adjacent pixel pairs with different triangle ids).
    """
    nb, h, w = tri.shape
    nf = faces.shape[0]
    # per view: each face's screen winding, its edge planes, and its distance (in faces)
    # to the nearest face owning a silhouette edge, by a breadth-first search
    wind = np.empty((nb, nf), np.bool_)
    planes = np.empty((nb, nf, 3, 3))
    for b in range(nb):
        for f in range(nf):
            wind[b, f] = _winding(clip, faces, b, f)
            for e in range(3):
                va = faces[f, (e + 1) % 3]
                vb = faces[f, (e + 2) % 3]
                nx, ny, nz = _cross(
                    np.float64(clip[b, va, 0]),
                    np.float64(clip[b, va, 1]),
                    np.float64(clip[b, va, 3]),
                    np.float64(clip[b, vb, 0]),
                    np.float64(clip[b, vb, 1]),
                    np.float64(clip[b, vb, 3]),
                )
                planes[b, f, e, 0] = nx
                planes[b, f, e, 1] = ny
                planes[b, f, e, 2] = nz
    dist = np.full((nb, nf), MAX_WALK, np.int64)
    queue = np.empty(nf, np.int64)
    for b in range(nb):
        head = 0
        tail = 0
        for f in range(nf):
            for e in range(3):
                g = neigh[f, e]
                if g < 0 or wind[b, g] != wind[b, f]:
                    dist[b, f] = 0
                    queue[tail] = f
                    tail += 1
                    break
        while head < tail:
            f = queue[head]
            head += 1
            if dist[b, f] + 1 >= MAX_WALK:
                continue
            for e in range(3):
                g = neigh[f, e]
                if g >= 0 and dist[b, g] > dist[b, f] + 1:
                    dist[b, g] = dist[b, f] + 1
                    queue[tail] = g
                    tail += 1
    near = _near_silhouette(clip, faces, neigh, wind, dist, h, w)
    front_o = np.empty(cap, np.int64)
    back_o = np.empty(cap, np.int64)
    face_o = np.empty(cap, np.int64)
    edge_o = np.empty(cap, np.int64)
    t_o = np.empty(cap, np.float64)
    n = 0
    for b in range(nb):
        for j in range(h):
            for i in range(w):
                if not near[b, j, i]:  # no silhouette edge within reach of its pairs
                    continue
                for d in range(2):  # 0: right neighbour, 1: neighbour below
                    if d == 0:
                        if i + 1 >= w:
                            continue
                        j2, i2 = j, i + 1
                    else:
                        if j + 1 >= h:
                            continue
                        j2, i2 = j + 1, i
                    ta = tri[b, j, i]
                    tb = tri[b, j2, i2]
                    if ta == tb:
                        continue
                    a_front = ta >= 0 and (tb < 0 or depth[b, j, i] <= depth[b, j2, i2])
                    if a_front:
                        f, jf, i_f, jb, ib = ta, j, i, j2, i2
                    else:
                        f, jf, i_f, jb, ib = tb, j2, i2, j, i
                    if dist[b, f] >= MAX_WALK:  # cheap reject: no silhouette within reach
                        continue
                    pxf = (2.0 * i_f + 1.0) / w - 1.0
                    pyf = 1.0 - (2.0 * jf + 1.0) / h
                    pxb = (2.0 * ib + 1.0) / w - 1.0
                    pyb = 1.0 - (2.0 * jb + 1.0) / h
                    found = -1
                    tfound = 0.0
                    for _ in range(MAX_WALK):
                        # u_e is linear along the segment: u_e(t) = up + t (uq - up); the
                        # segment leaves the face where the first decreasing u_e hits 0
                        sgn = 1.0 if wind[b, f] else -1.0
                        best = -1
                        tbest = np.inf
                        for e in range(3):
                            nx, ny, nz = planes[b, f, e, 0], planes[b, f, e, 1], planes[b, f, e, 2]
                            up = pxf * nx + pyf * ny + nz
                            uq = pxb * nx + pyb * ny + nz
                            if (uq - up) * sgn < 0.0:
                                te = up / (up - uq)
                                if te < tbest:
                                    tbest = te
                                    best = e
                        if best < 0 or tbest >= 1.0:
                            break  # the other centre is inside this face: no edge between
                        g = neigh[f, best]
                        if g < 0 or wind[b, g] != wind[b, f]:
                            found = best
                            tfound = tbest
                            break
                        f = g
                    if found < 0:
                        continue
                    # Each edge is handled by one pair direction only (as nvdiffrast does):
                    # horizontal pairs for edges steeper than 45 degrees on screen, vertical
                    # pairs for flatter ones, so a straight edge's area comes out exact.
                    va = faces[f, (found + 1) % 3]
                    vb = faces[f, (found + 2) % 3]
                    ex = (clip[b, va, 0] / clip[b, va, 3] - clip[b, vb, 0] / clip[b, vb, 3]) * w
                    ey = (clip[b, va, 1] / clip[b, va, 3] - clip[b, vb, 1] / clip[b, vb, 3]) * h
                    if (abs(ex) <= abs(ey)) != (d == 0):
                        continue
                    front_o[n] = (b * h + jf) * w + i_f
                    back_o[n] = (b * h + jb) * w + ib
                    face_o[n] = f
                    edge_o[n] = found
                    t_o[n] = min(max(tfound, 0.0), 1.0)
                    n += 1
    return front_o[:n], back_o[:n], face_o[:n], edge_o[:n], t_o[:n]


@numba.njit(cache=True, nogil=True)
def _near_silhouette(clip, faces, neigh, wind, dist, h, w):
    """``(B, H, W)`` bool: pixels whose centre lies within :data:`NEAR_EDGE_PIXELS` of the
    screen box of a silhouette edge (every pixel of a view where such an edge has a vertex
    behind the camera). Only a pair whose front pixel is marked can record an edge, and most
    pairs with different triangles are interior ones far from any silhouette."""
    nb, nf = wind.shape
    near = np.zeros((nb, h, w), np.bool_)
    for b in range(nb):
        for f in range(nf):
            if dist[b, f] != 0:
                continue
            for e in range(3):
                g = neigh[f, e]
                if g >= 0 and wind[b, g] == wind[b, f]:
                    continue
                va = faces[f, (e + 1) % 3]
                vb = faces[f, (e + 2) % 3]
                wa = np.float64(clip[b, va, 3])
                wb = np.float64(clip[b, vb, 3])
                if wa <= MIN_W or wb <= MIN_W:
                    near[b, :, :] = True
                    continue
                # pixel units as in cover: column (x+1)W/2 - 0.5, row (1-y)H/2 - 0.5
                xa = (clip[b, va, 0] / wa + 1.0) * 0.5 * w - 0.5
                xb = (clip[b, vb, 0] / wb + 1.0) * 0.5 * w - 0.5
                ya = (1.0 - clip[b, va, 1] / wa) * 0.5 * h - 0.5
                yb = (1.0 - clip[b, vb, 1] / wb) * 0.5 * h - 0.5
                # clamp in floats first: a vertex near the camera plane projects far away
                x0 = max(min(xa, xb) - NEAR_EDGE_PIXELS, -1.0)
                x1 = min(max(xa, xb) + NEAR_EDGE_PIXELS, np.float64(w))
                y0 = max(min(ya, yb) - NEAR_EDGE_PIXELS, -1.0)
                y1 = min(max(ya, yb) + NEAR_EDGE_PIXELS, np.float64(h))
                i0 = max(int(math.floor(x0)), 0)
                i1 = min(int(math.ceil(x1)), w - 1)
                j0 = max(int(math.floor(y0)), 0)
                j1 = min(int(math.ceil(y1)), h - 1)
                for j in range(j0, j1 + 1):
                    for i in range(i0, i1 + 1):
                        near[b, j, i] = True
    return near


@numba.njit(cache=True, nogil=True)
def neighbours_across_edges(face_edges, num_edges):
    """``(F, 3)`` int64: the face across the edge opposite each corner (-1 unless exactly two
    face sides share the edge), from ``face_edges`` ``(F, 3)`` whose entry ``k`` is the edge
    from corner ``k`` to corner ``k + 1`` (:func:`models.geometry.remesh.edges_unique`)."""
    nf = face_edges.shape[0]
    count = np.zeros(num_edges, np.int64)
    first = np.full(num_edges, -1, np.int64)
    second = np.full(num_edges, -1, np.int64)
    for f in range(nf):
        for k in range(3):
            e = face_edges[f, k]
            if count[e] == 0:
                first[e] = f
            elif count[e] == 1:
                second[e] = f
            count[e] += 1
    out = np.full((nf, 3), -1, np.int64)
    seen = np.zeros(num_edges, np.bool_)
    for f in range(nf):
        for k in range(3):
            e = face_edges[f, k]
            if count[e] != 2:
                continue
            # the edge from corner k to k + 1 is opposite corner k + 2; the first of its two
            # sides met gets the second's face and the other way round
            if not seen[e]:
                seen[e] = True
                out[f, (k + 2) % 3] = second[e]
            else:
                out[f, (k + 2) % 3] = first[e]
    return out


@numba.njit(cache=True, nogil=True)
def aa_forward(image, front, back, t, out):
    """Blend pairs into ``out`` (a copy of ``image``, flat ``(P, C)``), see ``antialias``."""
    nc = image.shape[1]
    for n in range(front.shape[0]):
        fa, ba = front[n], back[n]
        alpha = t[n] - 0.5  # > 0: the front face covers part of the back pixel
        for c in range(nc):
            diff = image[fa, c] - image[ba, c]
            if alpha > 0.0:
                out[ba, c] += alpha * diff
            else:
                out[fa, c] += alpha * diff


@numba.njit(cache=True, nogil=True)
def aa_backward(
    image,
    clip,
    faces,
    front,
    back,
    face,
    edge,
    t,
    nbatch_pixels,
    w,
    h,
    g_out,
    g_image,
    g_clip,
    need_clip,
):
    """Grads of :func:`aa_forward` w.r.t. ``image`` (``g_image`` starts as ``g_out``) and clip.

    ``t = u_p / (u_p - u_q)`` with ``u = X . (c_a x c_b)`` for the exit edge ``(a, b)``:
    ``dt/du_p = -u_q / (u_p - u_q)^2``, ``dt/du_q = u_p / (u_p - u_q)^2``; with
    ``R = g_up P + g_uq Q``: ``grad c_a = c_b x R``, ``grad c_b = R x c_a``.
    """
    nc = image.shape[1]
    for n in range(front.shape[0]):
        fa, ba = front[n], back[n]
        alpha = t[n] - 0.5
        # the blended pixel and the direction of its colour change
        tgt = ba if alpha > 0.0 else fa
        gt = 0.0
        for c in range(nc):
            diff = image[fa, c] - image[ba, c]
            g = g_out[tgt, c]
            g_image[fa, c] += alpha * g
            g_image[ba, c] -= alpha * g
            gt += g * diff
        if not need_clip or t[n] <= 0.0 or t[n] >= 1.0 or gt == 0.0:
            continue
        b = fa // nbatch_pixels
        pf = fa - b * nbatch_pixels
        pb = ba - b * nbatch_pixels
        jf, i_f = pf // w, pf % w
        jb, ib = pb // w, pb % w
        pxf = (2.0 * i_f + 1.0) / w - 1.0
        pyf = 1.0 - (2.0 * jf + 1.0) / h
        pxb = (2.0 * ib + 1.0) / w - 1.0
        pyb = 1.0 - (2.0 * jb + 1.0) / h
        f, e = face[n], edge[n]
        va = faces[f, (e + 1) % 3]
        vb = faces[f, (e + 2) % 3]
        ax, ay, aw = (
            np.float64(clip[b, va, 0]),
            np.float64(clip[b, va, 1]),
            np.float64(clip[b, va, 3]),
        )
        bx, by, bw = (
            np.float64(clip[b, vb, 0]),
            np.float64(clip[b, vb, 1]),
            np.float64(clip[b, vb, 3]),
        )
        nx, ny, nz = _cross(ax, ay, aw, bx, by, bw)
        up = pxf * nx + pyf * ny + nz
        uq = pxb * nx + pyb * ny + nz
        den = (up - uq) * (up - uq)
        if den == 0.0:
            continue
        g_up = gt * (-uq / den)
        g_uq = gt * (up / den)
        rx = g_up * pxf + g_uq * pxb
        ry = g_up * pyf + g_uq * pyb
        rz = g_up + g_uq
        cx, cy, cz = _cross(bx, by, bw, rx, ry, rz)
        g_clip[b, va, 0] += cx
        g_clip[b, va, 1] += cy
        g_clip[b, va, 3] += cz
        cx, cy, cz = _cross(rx, ry, rz, ax, ay, aw)
        g_clip[b, vb, 0] += cx
        g_clip[b, vb, 1] += cy
        g_clip[b, vb, 3] += cz


@numba.njit(cache=True, nogil=True)
def blend_box(tri, bary, corner, background, encode_normal, s, out):
    """Blend per-corner values at every sample and box-average ``s`` x ``s`` samples.

    ``tri`` ``(H, W)`` int64, ``bary`` ``(H, W, 3)``, ``corner`` ``(F, 3, C)`` float64;
    empty samples contribute ``background``. With ``encode_normal`` the blended value is
    normalised and encoded as the bundle spec's normal colour (``C`` = 3, values 0..255).
    ``out`` ``(H // s, W // s, C)`` float64 is accumulated into (start from zeros).
    """
    h, w = tri.shape
    nc = corner.shape[2]
    inv = 1.0 / (s * s)
    val = np.empty(nc)
    for j in range(h):
        oj = j // s
        for i in range(w):
            oi = i // s
            f = tri[j, i]
            if f < 0:
                for c in range(nc):
                    out[oj, oi, c] += background * inv
                continue
            b0 = np.float64(bary[j, i, 0])
            b1 = np.float64(bary[j, i, 1])
            b2 = np.float64(bary[j, i, 2])
            for c in range(nc):
                val[c] = b0 * corner[f, 0, c] + b1 * corner[f, 1, c] + b2 * corner[f, 2, c]
            if encode_normal:
                norm = math.sqrt(val[0] * val[0] + val[1] * val[1] + val[2] * val[2])
                if norm < 1e-12:
                    norm = 1e-12
                val[0] = 255.0 * (1.0 - val[0] / norm) / 2.0
                val[1] = 255.0 * (1.0 + val[1] / norm) / 2.0
                val[2] = 255.0 * (1.0 + val[2] / norm) / 2.0
            for c in range(nc):
                out[oj, oi, c] += val[c] * inv
