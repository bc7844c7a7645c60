"""numba kernels of texture baking: texture-space rasterisation, per-texel view projection,
closest points on triangles, tangent-space conversion and push-pull gutter filling.

The projection mirrors :meth:`models.reconstruct.texture._ViewSampler.observe` (same visibility
test, same weights) for millions of texels, where the numpy version allocates too much to be
quick.
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
def uv_texels(
    uv: np.ndarray, faces: np.ndarray, vertices: np.ndarray, normals: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rasterise a UV atlas in texture space: every texel whose centre lies in a face.

    ``uv`` ``(V, 2)`` glTF convention (texel row ``r`` spans ``v`` in ``[r/S, (r+1)/S]``, its
    centre at ``(c + 0.5) / S, (r + 0.5) / S``); ``faces`` ``(F, 3)``; ``vertices``/``normals``
    ``(V, 3)`` bundle frame. UV mapping is affine per face, so barycentrics are exact without
    perspective. Where faces overlap the later one wins; faces of zero UV area cover nothing.
    Returns flat texel indices ``(P,)`` (row-major), faces ``(P,)``, barycentrics ``(P, 3)``,
    surface points ``(P, 3)`` and unit interpolated normals ``(P, 3)``.
    """
    owner = np.full(size * size, -1, np.int32)
    for f in range(faces.shape[0]):
        a, b, c = faces[f, 0], faces[f, 1], faces[f, 2]
        ax, ay = uv[a, 0] * size, uv[a, 1] * size
        bx, by = uv[b, 0] * size, uv[b, 1] * size
        cx, cy = uv[c, 0] * size, uv[c, 1] * size
        area = (bx - ax) * (cy - ay) - (cx - ax) * (by - ay)
        if area == 0.0:
            continue
        c0 = max(int(np.floor(min(ax, bx, cx) - 0.5)), 0)
        c1 = min(int(np.ceil(max(ax, bx, cx) - 0.5)), size - 1)
        r0 = max(int(np.floor(min(ay, by, cy) - 0.5)), 0)
        r1 = min(int(np.ceil(max(ay, by, cy) - 0.5)), size - 1)
        for r in range(r0, r1 + 1):
            py = r + 0.5
            for col in range(c0, c1 + 1):
                px = col + 0.5
                w1 = ((px - ax) * (cy - ay) - (cx - ax) * (py - ay)) / area
                w2 = ((bx - ax) * (py - ay) - (px - ax) * (by - ay)) / area
                if w1 >= 0.0 and w2 >= 0.0 and w1 + w2 <= 1.0:
                    owner[r * size + col] = f
    count = 0
    for i in range(owner.shape[0]):
        if owner[i] >= 0:
            count += 1
    index = np.empty(count, np.int64)
    face = np.empty(count, np.int64)
    bary = np.empty((count, 3))
    points = np.empty((count, 3))
    out_n = np.empty((count, 3))
    k = 0
    for i in range(owner.shape[0]):
        f = owner[i]
        if f < 0:
            continue
        a, b, c = faces[f, 0], faces[f, 1], faces[f, 2]
        ax, ay = uv[a, 0] * size, uv[a, 1] * size
        bx, by = uv[b, 0] * size, uv[b, 1] * size
        cx, cy = uv[c, 0] * size, uv[c, 1] * size
        area = (bx - ax) * (cy - ay) - (cx - ax) * (by - ay)
        px = i % size + 0.5
        py = i // size + 0.5
        w1 = ((px - ax) * (cy - ay) - (cx - ax) * (py - ay)) / area
        w2 = ((bx - ax) * (py - ay) - (px - ax) * (by - ay)) / area
        w0 = 1.0 - w1 - w2
        index[k] = i
        face[k] = f
        bary[k, 0], bary[k, 1], bary[k, 2] = w0, w1, w2
        for j in range(3):
            points[k, j] = w0 * vertices[a, j] + w1 * vertices[b, j] + w2 * vertices[c, j]
            out_n[k, j] = w0 * normals[a, j] + w1 * normals[b, j] + w2 * normals[c, j]
        length = np.sqrt(out_n[k, 0] ** 2 + out_n[k, 1] ** 2 + out_n[k, 2] ** 2)
        if length > 1e-12:
            for j in range(3):
                out_n[k, j] /= length
        else:
            out_n[k, 0], out_n[k, 1], out_n[k, 2] = 0.0, 1.0, 0.0
        k += 1
    return index, face, bary, points, out_n


@njit(cache=True, fastmath=True, error_model="numpy")
def _pyramid_fill(index: np.ndarray, values: np.ndarray, h: int, w: int) -> np.ndarray:
    """Push-pull over an ``h`` x ``w`` image whose texels ``index`` ``(P,)`` (flat, row-major)
    hold ``values`` ``(P, C)`` and the rest are holes: pull (each coarser texel: the mean of
    the filled texels of its 2x2 block, odd sides padded with holes), then push (a hole takes
    its coarser texel's value). Returns the level-0 means ``(h * w, C)`` float32 (the filled
    texels' own values up to float32 rounding)."""
    channels = values.shape[1]
    heights = [h]
    widths = [w]
    while max(heights[-1], widths[-1]) > 1:
        heights.append((heights[-1] + 1) // 2)
        widths.append((widths[-1] + 1) // 2)
    levels = len(heights)
    offsets = np.zeros(levels + 1, np.int64)
    for k in range(levels):
        offsets[k + 1] = offsets[k] + heights[k] * widths[k]
    colour = np.zeros((offsets[levels], channels), np.float32)
    weight = np.zeros(offsets[levels], np.float32)
    for p in range(index.shape[0]):
        weight[index[p]] = 1.0
        for ch in range(channels):
            colour[index[p], ch] = values[p, ch]
    # pull: sums of colour and weight over 2x2 blocks
    for k in range(1, levels):
        fine, coarse = offsets[k - 1], offsets[k]
        fh, fw, cw = heights[k - 1], widths[k - 1], widths[k]
        for r in range(heights[k]):
            for c in range(cw):
                dst = coarse + r * cw + c
                for dr in range(2):
                    rr = 2 * r + dr
                    if rr >= fh:
                        continue
                    for dc in range(2):
                        cc = 2 * c + dc
                        if cc >= fw:
                            continue
                        src = fine + rr * fw + cc
                        weight[dst] += weight[src]
                        for ch in range(channels):
                            colour[dst, ch] += colour[src, ch]
    # push: each level's means; its holes take the coarser level's value
    top = offsets[levels - 1]
    for i in range(top, offsets[levels]):
        for ch in range(channels):
            colour[i, ch] = colour[i, ch] / max(weight[i], np.float32(1e-12))
    for k in range(levels - 2, -1, -1):
        fine, coarse = offsets[k], offsets[k + 1]
        fw, cw = widths[k], widths[k + 1]
        for r in range(heights[k]):
            for c in range(fw):
                i = fine + r * fw + c
                if weight[i] > 0:
                    for ch in range(channels):
                        colour[i, ch] = colour[i, ch] / weight[i]
                else:
                    j = coarse + (r // 2) * cw + c // 2
                    for ch in range(channels):
                        colour[i, ch] = colour[j, ch]
    return colour[: h * w]


@njit(cache=True, fastmath=True, error_model="numpy")
def push_pull(index: np.ndarray, values: np.ndarray, h: int, w: int) -> np.ndarray:
    """:func:`_pyramid_fill` as an ``(h * w, C)`` float64 image whose filled texels keep their
    exact ``values``."""
    out = _pyramid_fill(index, values, h, w).astype(np.float64)
    for p in range(index.shape[0]):
        for ch in range(values.shape[1]):
            out[index[p], ch] = values[p, ch]
    return out


@njit(cache=True, fastmath=True, error_model="numpy")
def push_pull_u8(index: np.ndarray, values: np.ndarray, h: int, w: int) -> np.ndarray:
    """:func:`push_pull` encoded as ``(h * w, C)`` uint8: ``round(clip(x, 0, 1) * 255)``."""
    filled = _pyramid_fill(index, values, h, w)
    out = np.empty(filled.shape, np.uint8)
    for i in range(filled.shape[0]):
        for ch in range(filled.shape[1]):
            out[i, ch] = np.uint8(np.round(min(max(filled[i, ch], 0.0), 1.0) * 255.0))
    for p in range(index.shape[0]):
        for ch in range(values.shape[1]):
            out[index[p], ch] = np.uint8(np.round(min(max(values[p, ch], 0.0), 1.0) * 255.0))
    return out


@njit(cache=True, fastmath=True, error_model="numpy")
def tangent_space(
    world: np.ndarray,
    face: np.ndarray,
    bary: np.ndarray,
    normals: np.ndarray,
    faces: np.ndarray,
    tangents: np.ndarray,
) -> np.ndarray:
    """World unit normals ``(P, 3)`` at texels (faces ``(P,)``, barycentrics ``(P, 3)``,
    interpolated unit normals ``(P, 3)``) -> tangent space ``(P, 3)``, in the frame a glTF
    viewer rebuilds: ``T`` the interpolated ``TANGENT`` made orthogonal to ``N``, ``B = w *
    cross(N, T)`` with ``w`` the sign of the interpolated handedness. ``faces`` ``(F, 3)`` and
    ``tangents`` ``(V, 4)`` of the UV mesh. A local ``z`` below 0.05 (a normal facing away from
    its own surface, an artefact of the transfer) is raised to 0.05 before normalising."""
    out = np.empty_like(world)
    for p in range(world.shape[0]):
        f = face[p]
        nx, ny, nz = normals[p, 0], normals[p, 1], normals[p, 2]
        tx = ty = tz = hw = 0.0
        for k in range(3):
            vtx = faces[f, k]
            b = bary[p, k]
            tx += b * tangents[vtx, 0]
            ty += b * tangents[vtx, 1]
            tz += b * tangents[vtx, 2]
            hw += b * tangents[vtx, 3]
        d = nx * tx + ny * ty + nz * tz
        tx, ty, tz = tx - nx * d, ty - ny * d, tz - nz * d
        length = np.sqrt(tx * tx + ty * ty + tz * tz)
        if length > 1e-12:
            tx, ty, tz = tx / length, ty / length, tz / length
        else:
            tx, ty, tz = 1.0, 0.0, 0.0
        sign = -1.0 if hw < 0.0 else 1.0
        bx = (ny * tz - nz * ty) * sign
        by = (nz * tx - nx * tz) * sign
        bz = (nx * ty - ny * tx) * sign
        wx, wy, wz = world[p, 0], world[p, 1], world[p, 2]
        lx = wx * tx + wy * ty + wz * tz
        ly = wx * bx + wy * by + wz * bz
        lz = max(wx * nx + wy * ny + wz * nz, 0.05)
        length = np.sqrt(lx * lx + ly * ly + lz * lz)
        if length > 1e-12:
            out[p, 0], out[p, 1], out[p, 2] = lx / length, ly / length, lz / length
        else:
            out[p, 0], out[p, 1], out[p, 2] = 0.0, 0.0, 1.0
    return out
