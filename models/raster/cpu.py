"""CPU rasteriser: numba (or OpenGL/EGL) coverage, differentiable barycentrics and anti-aliasing.

Coverage (which triangle each pixel centre sees, after a depth test) is computed without
gradients, by a numba kernel by default or by OpenGL through EGL on Mesa llvmpipe
(``CpuRasteriser(coverage="egl")``). Everything differentiable is recomputed in torch from
the clip-space vertices, the way nvdiffrast does it on the GPU:

- barycentrics from the pixel-centre NDC point and the covering triangle's clip-space vertices
  in the 2D-homogeneous formulation (perspective-correct, no division by ``w`` per vertex);
- an analytic silhouette term: where neighbouring pixels see different triangles and the
  exit edge of the front triangle is a silhouette edge (a boundary edge, or one whose two
  faces face opposite ways on screen), the pair's colours blend by where the edge crosses
  the segment between the two pixel centres, so image losses reach vertex positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from models.raster.base import Rasterisation, RasteriserUnavailable

#: Vertices with clip ``w`` at or below this are behind the camera; their triangles are skipped
#: by the numba coverage kernel (the bundle's cameras never need clipping).
MIN_W = 1e-6


# ---------------------------------------------------------------------------------------------
# Coverage: numba kernel
# ---------------------------------------------------------------------------------------------

_NUMBA_KERNEL = None


def _numba_kernel():
    """Compile (once per process, cached on disk) the z-buffer coverage kernel."""
    global _NUMBA_KERNEL
    if _NUMBA_KERNEL is not None:
        return _NUMBA_KERNEL
    try:
        import numba
    except ImportError as exc:  # pragma: no cover - numba is a project dependency
        raise RasteriserUnavailable("the CPU rasteriser needs numba: pip install numba") from exc

    @numba.njit(cache=True, nogil=True)
    def cover(clip, faces, height, width, tri_id, zbuf):
        # clip (B, V, 4) float32; faces (F, 3) int32; tri_id (B, H, W) int32 = -1;
        # zbuf (B, H, W) float32 = +inf. Pixel (i, j) centre: x = 2(i+0.5)/W-1, y = 1-2(j+0.5)/H,
        # so in pixel units px = (x+1)W/2 - 0.5 and py = (1-y)H/2 - 0.5.
        nb = clip.shape[0]
        nf = faces.shape[0]
        sx = np.empty(3)
        sy = np.empty(3)
        sz = np.empty(3)
        for b in range(nb):
            for f in range(nf):
                ok = True
                for k in range(3):
                    v = faces[f, k]
                    w = np.float64(clip[b, v, 3])
                    if w <= MIN_W:
                        ok = False
                        break
                    sx[k] = (np.float64(clip[b, v, 0]) / w + 1.0) * 0.5 * width - 0.5
                    sy[k] = (1.0 - np.float64(clip[b, v, 1]) / w) * 0.5 * height - 0.5
                    sz[k] = np.float64(clip[b, v, 2]) / w
                if not ok:
                    continue
                area = (sx[1] - sx[0]) * (sy[2] - sy[0]) - (sx[2] - sx[0]) * (sy[1] - sy[0])
                if area == 0.0:
                    continue
                inv = 1.0 / area
                x0 = max(int(math.ceil(min(sx[0], sx[1], sx[2]))), 0)
                x1 = min(int(math.floor(max(sx[0], sx[1], sx[2]))), width - 1)
                y0 = max(int(math.ceil(min(sy[0], sy[1], sy[2]))), 0)
                y1 = min(int(math.floor(max(sy[0], sy[1], sy[2]))), height - 1)
                for j in range(y0, y1 + 1):
                    py = np.float64(j)
                    for i in range(x0, x1 + 1):
                        px = np.float64(i)
                        e0 = ((sx[2] - sx[1]) * (py - sy[1]) - (sy[2] - sy[1]) * (px - sx[1])) * inv
                        if e0 < 0.0:
                            continue
                        e1 = ((sx[0] - sx[2]) * (py - sy[2]) - (sy[0] - sy[2]) * (px - sx[2])) * inv
                        if e1 < 0.0:
                            continue
                        e2 = 1.0 - e0 - e1
                        if e2 < 0.0:
                            continue
                        z = e0 * sz[0] + e1 * sz[1] + e2 * sz[2]
                        if z < -1.0 or z > 1.0:
                            continue
                        if z < zbuf[b, j, i]:
                            zbuf[b, j, i] = z
                            tri_id[b, j, i] = f

    _NUMBA_KERNEL = cover
    return cover


def coverage_numba(clip: np.ndarray, faces: np.ndarray, resolution: tuple[int, int]) -> np.ndarray:
    """Triangle id per pixel ``(B, H, W)`` int64 (-1 empty) for ``clip`` ``(B, V, 4)`` float32.

    Both windings are drawn (no culling); the nearest NDC depth wins; triangles with a vertex
    behind the camera are skipped.
    """
    h, w = resolution
    b = clip.shape[0]
    tri = np.full((b, h, w), -1, dtype=np.int32)
    zbuf = np.full((b, h, w), np.inf, dtype=np.float32)
    _numba_kernel()(
        np.ascontiguousarray(clip, dtype=np.float32),
        np.ascontiguousarray(faces, dtype=np.int32),
        h,
        w,
        tri,
        zbuf,
    )
    return tri.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Coverage: OpenGL on EGL (Mesa llvmpipe)
# ---------------------------------------------------------------------------------------------

_GL: dict = {}

_VERTEX_SHADER = """
#version 330
in vec4 in_clip;
void main() { gl_Position = in_clip; }
"""

# Triangle id + 1 into an integer attachment (0 stays "empty").
_FRAGMENT_SHADER = """
#version 330
out int out_id;
void main() { out_id = gl_PrimitiveID + 1; }
"""


def _gl_context():
    """The process's EGL context and id-writing program (created once)."""
    if "ctx" not in _GL:
        try:
            import moderngl
        except ImportError as exc:
            raise RasteriserUnavailable("EGL coverage needs moderngl: pip install moderngl") from exc
        try:
            ctx = moderngl.create_standalone_context(backend="egl")
        except Exception as exc:  # moderngl raises plain Exception when EGL is missing
            raise RasteriserUnavailable(
                f"no EGL OpenGL context ({exc}); install Mesa EGL (libegl1, libgl1-mesa-dri)"
            ) from exc
        _GL["ctx"] = ctx
        _GL["prog"] = ctx.program(vertex_shader=_VERTEX_SHADER, fragment_shader=_FRAGMENT_SHADER)
        _GL["fbo"] = {}
    return _GL["ctx"], _GL["prog"]


def coverage_egl(clip: np.ndarray, faces: np.ndarray, resolution: tuple[int, int]) -> np.ndarray:
    """Like :func:`coverage_numba`, drawn by OpenGL (clipping at the near/far planes)."""
    import moderngl

    ctx, prog = _gl_context()
    h, w = resolution
    key = (h, w)
    if key not in _GL["fbo"]:
        _GL["fbo"] = {
            key: ctx.framebuffer(
                color_attachments=[ctx.renderbuffer((w, h), components=1, dtype="i4")],
                depth_attachment=ctx.depth_renderbuffer((w, h)),
            )
        }
    fbo = _GL["fbo"][key]
    fbo.use()
    ctx.enable(moderngl.DEPTH_TEST)
    ctx.disable(moderngl.CULL_FACE)
    ibo = ctx.buffer(np.ascontiguousarray(faces, dtype=np.int32).tobytes())
    out = np.empty((clip.shape[0], h, w), dtype=np.int64)
    try:
        for b in range(clip.shape[0]):
            vbo = ctx.buffer(np.ascontiguousarray(clip[b], dtype=np.float32).tobytes())
            vao = ctx.vertex_array(prog, [(vbo, "4f", "in_clip")], index_buffer=ibo, index_element_size=4)
            fbo.clear(depth=1.0)
            vao.render(moderngl.TRIANGLES)
            ids = np.frombuffer(fbo.read(components=1, dtype="i4"), dtype=np.int32).reshape(h, w)
            out[b] = ids[::-1] - 1  # OpenGL's row 0 is the bottom
            vao.release()
            vbo.release()
    finally:
        ibo.release()
    return out


COVERAGE = {"numba": coverage_numba, "egl": coverage_egl}


# ---------------------------------------------------------------------------------------------
# Differentiable parts (torch)
# ---------------------------------------------------------------------------------------------


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


def face_neighbours(faces: torch.Tensor) -> torch.Tensor:
    """``(F, 3)`` int64: the face across the edge opposite each corner, -1 on boundary edges.

    Edges shared by more than two faces (non-manifold) count as boundary edges.
    """
    f = faces.shape[0]
    a = faces[:, [1, 2, 0]].reshape(-1)
    b = faces[:, [2, 0, 1]].reshape(-1)
    n = int(faces.max()) + 1 if f else 1
    key = torch.minimum(a, b) * n + torch.maximum(a, b)
    order = torch.argsort(key)
    k = key[order]
    same_next = torch.zeros_like(k, dtype=torch.bool)
    same_next[:-1] = k[1:] == k[:-1]
    same_prev = torch.zeros_like(same_next)
    same_prev[1:] = same_next[:-1]
    after_next = torch.zeros_like(same_next)
    after_next[:-2] = k[2:] == k[:-2]
    before_prev = torch.zeros_like(same_next)
    before_prev[2:] = k[2:] == k[:-2]
    # exactly two half-edges share the key: pair (m, m+1)
    first = same_next & ~same_prev & ~after_next
    second = same_prev & ~same_next & ~before_prev
    out = torch.full((3 * f,), -1, dtype=torch.int64, device=faces.device)
    m = torch.nonzero(first).squeeze(1)
    out[order[m]] = order[m + 1] // 3
    m = torch.nonzero(second).squeeze(1)
    out[order[m]] = order[m - 1] // 3
    return out.view(f, 3)


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


@dataclass
class CpuRasterisation(Rasterisation):
    """A :class:`Rasterisation` that also keeps the per-face edge functions for anti-aliasing.

    ``planes``: ``(B, F, 3, 3)`` from :func:`edge_planes` (differentiable w.r.t. ``clip``).
    """

    planes: torch.Tensor | None = None


class CpuRasteriser:
    """The CPU backend: numba/EGL coverage, torch barycentrics, analytic silhouette anti-aliasing.

    ``coverage``: ``"numba"`` (default, no system libraries) or ``"egl"`` (OpenGL on Mesa).
    """

    name = "cpu"
    differentiable_rasterisation = True

    def __init__(self, coverage: str = "numba") -> None:
        if coverage not in COVERAGE:
            raise ValueError(f"coverage must be one of {sorted(COVERAGE)}, got {coverage!r}")
        self.coverage = coverage
        self._neigh_key: tuple | None = None
        self._neigh: torch.Tensor | None = None

    def rasterise(
        self, clip: torch.Tensor, faces: torch.Tensor, resolution: tuple[int, int]
    ) -> Rasterisation:
        """Rasterise ``clip`` ``(B, V, 4)`` or ``(V, 4)`` float32 triangles ``faces`` ``(F, 3)``.

        ``resolution`` is ``(H, W)``. Returns a :class:`Rasterisation` whose ``bary`` and
        ``depth`` are differentiable with respect to ``clip``.
        """
        if clip.ndim == 2:
            clip = clip[None]
        if clip.ndim != 3 or clip.shape[-1] != 4:
            raise ValueError(f"clip must be (B, V, 4) or (V, 4), got {tuple(clip.shape)}")
        faces = faces.to(device=clip.device, dtype=torch.int64)
        h, w = int(resolution[0]), int(resolution[1])
        bsz, nf = clip.shape[0], faces.shape[0]
        tri_np = COVERAGE[self.coverage](clip.detach().cpu().numpy(), faces.cpu().numpy(), (h, w))
        tri_id = torch.from_numpy(tri_np).to(clip.device)

        flat = tri_id.view(-1)
        idx = torch.nonzero(flat >= 0).squeeze(1)  # covered pixels over the batch
        bidx = torch.div(idx, h * w, rounding_mode="floor")
        p = _pixel_grid(h, w, clip.device)[idx - bidx * (h * w)].to(clip.dtype)  # (N, 3)
        planes = edge_planes(clip, faces)  # (B, F, 3, 3)
        g = bidx * nf + flat[idx]  # face index over the batch
        u = torch.bmm(planes.reshape(-1, 3, 3)[g], p[:, :, None])[..., 0]  # (N, 3)
        bary = u / u.sum(-1, keepdim=True)
        zw = clip[..., [2, 3]][:, faces].reshape(-1, 3, 2)[g]  # (N, 3, 2)
        zw = torch.bmm(bary[:, None, :], zw)[:, 0]
        depth = zw[:, 0] / zw[:, 1]

        bary_full = torch.zeros(bsz * h * w, 3, dtype=clip.dtype, device=clip.device)
        bary_full = bary_full.index_put((idx,), bary)
        depth_full = torch.ones(bsz * h * w, dtype=clip.dtype, device=clip.device)
        depth_full = depth_full.index_put((idx,), depth)
        return CpuRasterisation(
            tri_id=tri_id,
            bary=bary_full.view(bsz, h, w, 3),
            depth=depth_full.view(bsz, h, w),
            clip=clip,
            faces=faces,
            planes=planes,
        )

    def interpolate(self, attributes: torch.Tensor, raster: Rasterisation) -> torch.Tensor:
        """Vertex attributes ``(V, C)`` or ``(B, V, C)`` -> ``(B, H, W, C)``, 0 where empty.

        Differentiable with respect to ``attributes`` and (through ``bary``) ``raster.clip``.
        """
        return interpolate(attributes, raster)

    def antialias(self, image: torch.Tensor, raster: Rasterisation) -> torch.Tensor:
        """Blend ``image`` ``(B, H, W, C)`` across silhouette edges (see module docstring).

        Differentiable with respect to ``image`` and ``raster.clip``.
        """
        return antialias(image, raster, self._neighbours(raster.faces))

    def _neighbours(self, faces: torch.Tensor) -> torch.Tensor:
        # A mesh is usually rasterised many times with the same faces tensor (an optimisation
        # loop); key on identity, version, shape and storage so a new or edited tensor recomputes.
        key = (id(faces), faces._version, tuple(faces.shape), faces.data_ptr())
        if self._neigh_key != key or self._neigh is None:
            self._neigh = face_neighbours(faces)
            self._neigh_key = key
        return self._neigh


_GRIDS: dict = {}


def _pixel_grid(height: int, width: int, device: torch.device) -> torch.Tensor:
    """Homogeneous NDC pixel centres ``(H*W, 3)`` float32, row-major from the top-left (cached)."""
    key = (height, width, str(device))
    if key not in _GRIDS:
        _GRIDS[key] = pixel_ndc(torch.arange(height * width, device=device), height, width)
    return _GRIDS[key]


def interpolate(attributes: torch.Tensor, raster: Rasterisation) -> torch.Tensor:
    """Backend-independent torch interpolation of vertex attributes with ``raster.bary``."""
    bsz, h, w = raster.tri_id.shape
    if attributes.ndim == 2:
        attributes = attributes[None].expand(bsz, -1, -1)
    if attributes.ndim != 3 or attributes.shape[0] != bsz:
        raise ValueError(f"attributes must be (V, C) or ({bsz}, V, C), got {tuple(attributes.shape)}")
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


def antialias(image: torch.Tensor, raster: Rasterisation, neighbours: torch.Tensor) -> torch.Tensor:
    """Analytic silhouette anti-aliasing in torch (vectorised over pixel pairs).

    For every horizontally or vertically adjacent pixel pair with different triangle ids, the
    front pixel (smaller depth; any covered pixel beats an empty one) is followed toward the
    other pixel's centre; if it leaves its triangle through a silhouette edge at fraction
    ``t`` of the way, the far pixel takes ``max(0, t - 1/2)`` of the front colour and the
    front pixel takes ``max(0, 1/2 - t)`` of the far colour. ``t`` comes from the clip-space
    vertices, so gradients of image losses reach vertex positions. ``neighbours`` is
    :func:`face_neighbours` of ``raster.faces``.
    """
    bsz, h, w, ch = image.shape
    if raster.tri_id.shape != (bsz, h, w):
        raise ValueError(f"image {tuple(image.shape)} does not match raster {tuple(raster.tri_id.shape)}")
    planes = getattr(raster, "planes", None)
    if planes is None:
        planes = edge_planes(raster.clip, raster.faces)
    nf = planes.shape[1]
    sil = silhouette_edges(raster.clip, raster.faces, neighbours, planes)  # (B, F, 3)
    sil_face = sil.any(-1).view(-1)  # faces with at least one silhouette edge
    sil = sil.view(-1, 3)
    planes = planes.reshape(-1, 3, 3)
    grid = _pixel_grid(h, w, image.device).to(planes.dtype)
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
        fid = b_ * nf + torch.where(a_front, ta, tb)  # front face over the batch
        # Cheap integer filter first: only faces owning a silhouette edge can blend.
        keep = torch.nonzero(sil_face[fid]).squeeze(1)
        if keep.numel() == 0:
            continue
        a_front, a_idx, b_idx, fid, b_ = a_front[keep], a_idx[keep], b_idx[keep], fid[keep], b_[keep]
        front = torch.where(a_front, a_idx, b_idx)
        back = torch.where(a_front, b_idx, a_idx)
        pl = planes[fid]  # (N, 3, 3)
        base = b_ * (h * w)
        u_p = torch.bmm(pl, grid[front - base][:, :, None])[..., 0]  # (N, 3)
        u_q = torch.bmm(pl, grid[back - base][:, :, None])[..., 0]
        with torch.no_grad():
            sign = torch.sign(u_p.sum(-1, keepdim=True))
            leaving = (u_q * sign < 0) & (u_p * sign >= 0)
            t_pick = torch.where(leaving, u_p / (u_p - u_q), torch.full_like(u_p, math.inf))
            edge = torch.argmin(t_pick, dim=1)
            rows = torch.arange(edge.shape[0], device=edge.device)
            ok = torch.nonzero(leaving[rows, edge] & sil[fid, edge]).squeeze(1)
        if ok.numel() == 0:
            continue
        e = edge[ok]
        up, uq = u_p[ok, e], u_q[ok, e]
        t = (up / (up - uq)).clamp(0.0, 1.0)[:, None].to(image.dtype)
        front, back = front[ok], back[ok]
        diff = flat_img[front] - flat_img[back]  # (M, C)
        delta_idx += [back, front]
        delta_val += [torch.clamp(t - 0.5, min=0.0) * diff, -torch.clamp(0.5 - t, min=0.0) * diff]
    if not delta_idx:
        return image
    delta = torch.zeros_like(flat_img).index_add(0, torch.cat(delta_idx), torch.cat(delta_val))
    return (flat_img + delta).view(bsz, h, w, ch)
