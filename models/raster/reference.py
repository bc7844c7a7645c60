"""Pure-torch reference of the CPU rasteriser's differentiable parts (slow; autograd).

The CPU backend (:mod:`models.raster.cpu`) runs numba kernels with hand-written gradients;
this module computes the same barycentrics, interpolation and silhouette anti-aliasing with
ordinary torch operations, so tests can check the kernels (values and gradients) against
torch autograd. Conventions are those of :mod:`models.raster.base`.
"""

from __future__ import annotations

import math

import torch

from models.raster.base import Rasterisation


def reference_bary(
    clip: torch.Tensor, faces: torch.Tensor, tri_id: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Barycentrics ``(B, H, W, 3)`` and NDC depth ``(B, H, W)`` for given coverage ``tri_id``."""
    bsz, h, w = tri_id.shape
    nf = faces.shape[0]
    flat = tri_id.reshape(-1)
    idx = torch.nonzero(flat >= 0).squeeze(1)
    bidx = torch.div(idx, h * w, rounding_mode="floor")
    p = pixel_ndc(idx - bidx * (h * w), h, w).to(clip.dtype)
    planes = edge_planes(clip, faces).reshape(-1, 3, 3)
    g = bidx * nf + flat[idx]
    u = torch.bmm(planes[g], p[:, :, None])[..., 0]
    bary = u / u.sum(-1, keepdim=True)
    zw = clip[..., [2, 3]][:, faces].reshape(-1, 3, 2)[g]
    zw = torch.bmm(bary[:, None, :], zw)[:, 0]
    depth = zw[:, 0] / zw[:, 1]
    bary_full = torch.zeros(bsz * h * w, 3, dtype=clip.dtype).index_put((idx,), bary)
    depth_full = torch.ones(bsz * h * w, dtype=clip.dtype).index_put((idx,), depth)
    return bary_full.view(bsz, h, w, 3), depth_full.view(bsz, h, w)


def edge_planes(clip: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """2D-homogeneous edge functions ``(B, F, 3, 3)``: row ``k`` is ``c_{k+1} x c_{k+2}``.

    With ``c = (x, y, w)`` of the clip-space vertices and ``p = (x_ndc, y_ndc, 1)``, the
    dot ``p . row_k`` is proportional to the perspective-correct barycentric of vertex ``k``
    and vanishes on the edge opposite vertex ``k``.
    """
    c = clip[..., [0, 1, 3]][:, faces]  # (B, F, 3, 3)
    c0, c1, c2 = c.unbind(2)
    return torch.stack(
        [torch.linalg.cross(c1, c2), torch.linalg.cross(c2, c0), torch.linalg.cross(c0, c1)], 2
    )


def pixel_ndc(index: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Flat pixel indices within one image ``(N,)`` -> homogeneous NDC centres ``(N, 3)``."""
    j = torch.div(index, width, rounding_mode="floor")
    i = index - j * width
    x = (2.0 * i.to(torch.float32) + 1.0) / width - 1.0
    y = 1.0 - (2.0 * j.to(torch.float32) + 1.0) / height
    return torch.stack([x, y, torch.ones_like(x)], -1)


def silhouette_edges(
    clip: torch.Tensor,
    faces: torch.Tensor,
    neighbours: torch.Tensor,
    planes: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(B, F, 3)`` bool: the edge opposite each corner is a silhouette in each view.

    A silhouette edge is a boundary edge or one whose two faces wind oppositely on screen.
    ``planes`` (from :func:`edge_planes`) saves recomputing the winding.
    """
    with torch.no_grad():
        if planes is None:
            planes = edge_planes(clip, faces)
        c0 = clip[..., [0, 1, 3]][:, faces[:, 0]]  # (B, F, 3)
        winding = (planes[:, :, 0] * c0).sum(-1) > 0  # det[c0, c1, c2]: screen winding
        other = winding[:, neighbours.clamp(min=0)]  # (B, F, 3)
        return (neighbours < 0)[None] | (other != winding[..., None])


def reference_interpolate(attributes: torch.Tensor, raster: Rasterisation) -> torch.Tensor:
    """Backend-independent torch interpolation of vertex attributes with ``raster.bary``."""
    bsz, h, w = raster.tri_id.shape
    if attributes.ndim == 2:
        attributes = attributes[None].expand(bsz, -1, -1)
    if attributes.ndim != 3 or attributes.shape[0] != bsz:
        raise ValueError(
            f"attributes must be (V, C) or ({bsz}, V, C), got {tuple(attributes.shape)}"
        )
    ch = attributes.shape[-1]
    flat = raster.tri_id.view(-1)
    idx = torch.nonzero(flat >= 0).squeeze(1)
    bidx = torch.div(idx, h * w, rounding_mode="floor")
    corners = raster.faces[flat[idx]]  # (N, 3)
    vals = attributes[bidx[:, None], corners]  # (N, 3, C)
    bary = raster.bary.reshape(-1, 3)[idx]
    out = (bary[..., None].to(vals.dtype) * vals).sum(1)
    full = torch.zeros(bsz * h * w, ch, dtype=out.dtype, device=out.device)
    return full.index_put((idx,), out).view(bsz, h, w, ch)


def reference_antialias(
    image: torch.Tensor, raster: Rasterisation, neighbours: torch.Tensor, max_walk: int = 16
) -> torch.Tensor:
    """Analytic silhouette anti-aliasing in torch (vectorised over pixel pairs).

    Same rule as :meth:`models.raster.cpu.CpuRasteriser.antialias`: for adjacent pixels with
    different triangle ids, the segment from the front pixel's centre toward the other centre
    is followed through its face and across non-silhouette edges (up to ``max_walk`` faces);
    where it leaves through a silhouette edge at fraction ``t`` of the way, the far pixel takes
    ``max(0, t - 1/2)`` of the front colour and the front pixel ``max(0, 1/2 - t)`` of the far
    colour. Horizontal pairs handle steep edges, vertical pairs flat ones. ``neighbours`` is
    :func:`models.raster.cpu.face_neighbours` of ``raster.faces`` (as a tensor).
    """
    bsz, h, w, ch = image.shape
    if raster.tri_id.shape != (bsz, h, w):
        raise ValueError(
            f"image {tuple(image.shape)} does not match raster {tuple(raster.tri_id.shape)}"
        )
    faces = raster.faces
    planes = edge_planes(raster.clip, faces)
    nf = planes.shape[1]
    with torch.no_grad():
        c0 = raster.clip[..., [0, 1, 3]][:, faces[:, 0]]
        wind = ((planes[:, :, 0] * c0).sum(-1) > 0).reshape(-1)  # (B*F,) screen winding
        sil = silhouette_edges(raster.clip, faces, neighbours, planes).reshape(-1, 3)
        ndc = raster.clip[..., :2] / raster.clip[..., 3:]
    planes = planes.reshape(-1, 3, 3)
    grid = pixel_ndc(torch.arange(h * w), h, w).to(planes.dtype)
    flat_img = image.reshape(-1, ch)
    flat_tri = raster.tri_id.reshape(-1)
    flat_depth = raster.depth.detach().reshape(-1)
    delta_idx = []
    delta_val = []
    for step in (1, w):
        tri = raster.tri_id
        differ = tri[:, :, :-1] != tri[:, :, 1:] if step == 1 else tri[:, :-1, :] != tri[:, 1:, :]
        b_, j_, i_ = torch.nonzero(differ, as_tuple=True)
        a_idx = (b_ * h + j_) * w + i_  # flat index of the first pixel of each pair
        b_idx = a_idx + step
        ta, tb = flat_tri[a_idx], flat_tri[b_idx]
        a_front = (ta >= 0) & ((tb < 0) | (flat_depth[a_idx] <= flat_depth[b_idx]))
        front = torch.where(a_front, a_idx, b_idx)
        back = torch.where(a_front, b_idx, a_idx)
        base = b_ * (h * w)
        p_f = grid[front - base][:, :, None]
        p_b = grid[back - base][:, :, None]
        with torch.no_grad():
            cur = b_ * nf + torch.where(a_front, ta, tb)  # current face over the batch
            rows = torch.arange(cur.shape[0])
            active = torch.ones_like(cur, dtype=torch.bool)
            found_face = torch.full_like(cur, -1)
            found_edge = torch.full_like(cur, -1)
            for _ in range(max_walk):
                u_p = torch.bmm(planes[cur], p_f)[..., 0]
                u_q = torch.bmm(planes[cur], p_b)[..., 0]
                sgn = torch.where(wind[cur], 1.0, -1.0)[:, None]
                dec = (u_q - u_p) * sgn < 0
                t_e = torch.where(dec, u_p / torch.where(dec, u_p - u_q, 1.0), math.inf)
                best = torch.argmin(t_e, dim=1)
                stop = t_e[rows, best] >= 1.0  # no exit before the other centre (or none)
                hit = active & ~stop & sil[cur, best]
                found_face[hit] = cur[hit]
                found_edge[hit] = best[hit]
                active = active & ~stop & ~sil[cur, best]
                nxt = neighbours[cur % nf, best].clamp(min=0) + b_ * nf
                cur = torch.where(active, nxt, cur)
            ok = found_face >= 0
            fe = found_edge.clamp(min=0)
            ff = found_face.clamp(min=0)
            va = faces[ff % nf, (fe + 1) % 3]
            vb = faces[ff % nf, (fe + 2) % 3]
            ex = (ndc[b_, va, 0] - ndc[b_, vb, 0]).abs() * w
            ey = (ndc[b_, va, 1] - ndc[b_, vb, 1]).abs() * h
            right_way = (ex <= ey) if step == 1 else (ex > ey)
            ok = torch.nonzero(ok & right_way).squeeze(1)
        if ok.numel() == 0:
            continue
        plane = planes[found_face[ok], found_edge[ok]]  # (M, 3), differentiable
        up = (plane * p_f[ok, :, 0]).sum(-1)
        uq = (plane * p_b[ok, :, 0]).sum(-1)
        t = (up / (up - uq)).clamp(0.0, 1.0)[:, None].to(image.dtype)
        front, back = front[ok], back[ok]
        diff = flat_img[front] - flat_img[back]  # (M, C)
        delta_idx += [back, front]
        delta_val += [torch.clamp(t - 0.5, min=0.0) * diff, -torch.clamp(0.5 - t, min=0.0) * diff]
    if not delta_idx:
        return image
    delta = torch.zeros_like(flat_img).index_add(0, torch.cat(delta_idx), torch.cat(delta_val))
    return (flat_img + delta).view(bsz, h, w, ch)
