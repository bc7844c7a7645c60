"""numba kernels of texture baking: per-texel view projection and closest points on triangles.

They mirror :meth:`models.reconstruct.texture._ViewSampler.observe` (same visibility test, same
weights) for millions of texels, where the numpy version allocates too much to be quick.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, fastmath=True, error_model="numpy", parallel=True)
def project_views(
    points: np.ndarray,
    normals: np.ndarray,
    mvp: np.ndarray,
    eyes: np.ndarray,
    view_weights: np.ndarray,
    masks: np.ndarray,
    depth: np.ndarray,
    images: np.ndarray,
    pixel_angle: float,
    depth_tolerance: float,
    max_slope: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean of ``images`` ``(N, T, T, C)`` over the views that see each point.

    ``points``/``normals`` ``(P, 3)`` bundle frame; ``mvp`` ``(N, 4, 4)``; ``eyes`` ``(N, 3)``;
    ``masks`` ``(N, T, T)`` bool (eroded foreground); ``depth`` ``(N, T, T)`` eye depth (inf
    where empty). Returns ``(P, C)`` float64 means (0 where unseen) and ``(P,)`` total weight.
    """
    n_views, t = masks.shape[0], masks.shape[1]
    channels = images.shape[3]
    out = np.zeros((points.shape[0], channels))
    total = np.zeros(points.shape[0])
    for p in prange(points.shape[0]):
        x, y, z = points[p, 0], points[p, 1], points[p, 2]
        for v in range(n_views):
            m = mvp[v]
            cx = m[0, 0] * x + m[0, 1] * y + m[0, 2] * z + m[0, 3]
            cy = m[1, 0] * x + m[1, 1] * y + m[1, 2] * z + m[1, 3]
            w = m[3, 0] * x + m[3, 1] * y + m[3, 2] * z + m[3, 3]
            px = (cx / w + 1.0) * 0.5 * t - 0.5
            py = (1.0 - cy / w) * 0.5 * t - 0.5
            if px < 0.0 or px > t - 1 or py < 0.0 or py > t - 1:
                continue
            x0 = min(int(np.floor(px)), t - 1)
            y0 = min(int(np.floor(py)), t - 1)
            x1 = min(x0 + 1, t - 1)
            y1 = min(y0 + 1, t - 1)
            if not (
                masks[v, y0, x0] and masks[v, y0, x1] and masks[v, y1, x0] and masks[v, y1, x1]
            ):
                continue
            ex, ey, ez = eyes[v, 0] - x, eyes[v, 1] - y, eyes[v, 2] - z
            el = np.sqrt(ex * ex + ey * ey + ez * ez)
            cos = abs(normals[p, 0] * ex + normals[p, 1] * ey + normals[p, 2] * ez) / el
            fx, fy = px - x0, py - y0
            d00, d01 = depth[v, y0, x0], depth[v, y0, x1]
            d10, d11 = depth[v, y1, x0], depth[v, y1, x1]
            w00, w01 = (1 - fx) * (1 - fy), fx * (1 - fy)
            w10, w11 = (1 - fx) * fy, fx * fy
            if np.isfinite(d00) and np.isfinite(d01) and np.isfinite(d10) and np.isfinite(d11):
                ref = w00 * d00 + w01 * d01 + w10 * d10 + w11 * d11
            else:
                ref = -np.inf
                for d in (d00, d01, d10, d11):
                    if np.isfinite(d) and d > ref:
                        ref = d
                if not np.isfinite(ref):
                    continue
            slope = min(np.sqrt(max(1.0 - cos * cos, 0.0)) / max(cos, 1e-6), max_slope)
            if w > ref + depth_tolerance + w * pixel_angle * slope:
                continue
            weight = view_weights[v] * cos * cos
            if weight <= 0.0:
                continue
            for c in range(channels):
                value = (
                    w00 * images[v, y0, x0, c]
                    + w01 * images[v, y0, x1, c]
                    + w10 * images[v, y1, x0, c]
                    + w11 * images[v, y1, x1, c]
                )
                out[p, c] += weight * value
            total[p] += weight
        if total[p] > 0:
            for c in range(channels):
                out[p, c] /= total[p]
    return out, total


@njit(cache=True, fastmath=True, error_model="numpy", parallel=True)
def closest_on_candidates(
    points: np.ndarray, candidates: np.ndarray, vertices: np.ndarray, faces: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each point ``(P, 3)`` the closest of its candidate triangles ``(P, K)`` (indices
    into ``faces`` ``(F, 3)`` of ``vertices`` ``(V, 3)``): ``(P,)`` face ids and ``(P, 3)``
    barycentrics of the closest point (Ericson's region test, Real-Time Collision Detection
    5.1.5)."""
    n, k = candidates.shape
    # degenerate candidates give NaN distances and are never chosen over the first candidate
    best_face = candidates[:, 0].copy()
    best_bary = np.zeros((n, 3))
    best_bary[:, 0] = 1.0
    for i in prange(n):
        px, py, pz = points[i, 0], points[i, 1], points[i, 2]
        best = np.inf
        for j in range(k):
            f = candidates[i, j]
            a = vertices[faces[f, 0]]
            b = vertices[faces[f, 1]]
            c = vertices[faces[f, 2]]
            abx, aby, abz = b[0] - a[0], b[1] - a[1], b[2] - a[2]
            acx, acy, acz = c[0] - a[0], c[1] - a[1], c[2] - a[2]
            apx, apy, apz = px - a[0], py - a[1], pz - a[2]
            d1 = abx * apx + aby * apy + abz * apz
            d2 = acx * apx + acy * apy + acz * apz
            bpx, bpy, bpz = px - b[0], py - b[1], pz - b[2]
            d3 = abx * bpx + aby * bpy + abz * bpz
            d4 = acx * bpx + acy * bpy + acz * bpz
            cpx, cpy, cpz = px - c[0], py - c[1], pz - c[2]
            d5 = abx * cpx + aby * cpy + abz * cpz
            d6 = acx * cpx + acy * cpy + acz * cpz
            va = d3 * d6 - d5 * d4
            vb = d5 * d2 - d1 * d6
            vc = d1 * d4 - d3 * d2
            if d1 <= 0 and d2 <= 0:
                u, vv, ww = 1.0, 0.0, 0.0
            elif d3 >= 0 and d4 <= d3:
                u, vv, ww = 0.0, 1.0, 0.0
            elif d6 >= 0 and d5 <= d6:
                u, vv, ww = 0.0, 0.0, 1.0
            elif vc <= 0 and d1 >= 0 and d3 <= 0:
                s = d1 / (d1 - d3)
                u, vv, ww = 1.0 - s, s, 0.0
            elif vb <= 0 and d2 >= 0 and d6 <= 0:
                s = d2 / (d2 - d6)
                u, vv, ww = 1.0 - s, 0.0, s
            elif va <= 0 and (d4 - d3) >= 0 and (d5 - d6) >= 0:
                s = (d4 - d3) / ((d4 - d3) + (d5 - d6))
                u, vv, ww = 0.0, 1.0 - s, s
            else:
                denom = va + vb + vc
                if denom == 0:
                    u, vv, ww = 1.0, 0.0, 0.0
                else:
                    vv = vb / denom
                    ww = vc / denom
                    u = 1.0 - vv - ww
            qx = u * a[0] + vv * b[0] + ww * c[0] - px
            qy = u * a[1] + vv * b[1] + ww * c[1] - py
            qz = u * a[2] + vv * b[2] + ww * c[2] - pz
            dist = qx * qx + qy * qy + qz * qz
            if dist < best:
                best = dist
                best_face[i] = f
                best_bary[i, 0], best_bary[i, 1], best_bary[i, 2] = u, vv, ww
    return best_face, best_bary


@njit(cache=True, fastmath=True, error_model="numpy")
def texel_attributes(
    tri: np.ndarray, bary: np.ndarray, faces: np.ndarray, vertices: np.ndarray, normals: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Covered texels of a UV rasterisation: ``tri`` ``(S*S,)`` face ids (-1 empty) and
    ``bary`` ``(S*S, 3)`` float32 -> flat indices ``(P,)``, faces ``(P,)``, barycentrics
    ``(P, 3)``, surface points ``(P, 3)`` and unit interpolated normals ``(P, 3)``."""
    count = 0
    for i in range(tri.shape[0]):
        if tri[i] >= 0:
            count += 1
    index = np.empty(count, np.int64)
    face = np.empty(count, np.int64)
    b = np.empty((count, 3))
    points = np.empty((count, 3))
    out_n = np.empty((count, 3))
    k = 0
    for i in range(tri.shape[0]):
        f = tri[i]
        if f < 0:
            continue
        index[k] = i
        face[k] = f
        b0, b1, b2 = float(bary[i, 0]), float(bary[i, 1]), float(bary[i, 2])
        b[k, 0], b[k, 1], b[k, 2] = b0, b1, b2
        a, c, d = faces[f, 0], faces[f, 1], faces[f, 2]
        for j in range(3):
            points[k, j] = b0 * vertices[a, j] + b1 * vertices[c, j] + b2 * vertices[d, j]
            out_n[k, j] = b0 * normals[a, j] + b1 * normals[c, j] + b2 * normals[d, j]
        length = np.sqrt(out_n[k, 0] ** 2 + out_n[k, 1] ** 2 + out_n[k, 2] ** 2)
        if length > 1e-12:
            for j in range(3):
                out_n[k, j] /= length
        else:
            out_n[k, 0], out_n[k, 1], out_n[k, 2] = 0.0, 1.0, 0.0
        k += 1
    return index, face, b, points, out_n
