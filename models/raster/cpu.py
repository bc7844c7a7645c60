"""CPU rasteriser: numba (or OpenGL/EGL) coverage, differentiable barycentrics and anti-aliasing.

Coverage (which triangle each pixel centre sees, after a depth test) is computed without
gradients, by a numba kernel by default or by OpenGL through EGL on Mesa llvmpipe
(``CpuRasteriser(coverage="egl")``). Everything differentiable is then recomputed from the
clip-space vertices, the way nvdiffrast does it on the GPU, as torch autograd functions whose
forward and backward are numba kernels (:mod:`models.raster._kernels`; a pure-torch reference
of the same maths is :mod:`models.raster.reference`):

- barycentrics from the pixel-centre NDC point and the covering triangle's clip-space vertices
  in the 2D-homogeneous formulation (perspective-correct, no division by ``w`` per vertex);
- interpolation of vertex attributes with them;
- an analytic silhouette term: where neighbouring pixels see different triangles and the
  exit edge of the front triangle is a silhouette edge (a boundary edge, or one whose two
  faces face opposite ways on screen), the pair's colours blend by where the edge crosses
  the segment between the two pixel centres, so image losses reach vertex positions.

The per-view kernels (coverage, barycentrics and their gradient, interpolation) split the
views over two threads: each view writes only its own slice of the outputs, so the result is
the same as on one thread, and the machine's second core is otherwise idle while one asset
is refined (torch runs on one thread). Compiled code is cached on disk by numba.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from models.raster.base import Rasterisation, RasteriserUnavailable

#: Threads the per-view kernels split the views over.
VIEW_THREADS = 2

_POOL: list[ThreadPoolExecutor] = []
# A forked child has the pool object but not its thread: it starts a pool of its own.
os.register_at_fork(after_in_child=_POOL.clear)


def over_views(run: Callable[[int, int], None], views: int, mid: int | None = None) -> None:
    """Call ``run(lo, hi)`` on the views ``[0, views)``: the views from ``mid`` (default:
    the second half, or none when :data:`VIEW_THREADS` is 1) on a helper thread (numba
    kernels release the GIL) while this thread does the others. ``run`` must write only the
    outputs of its own views."""
    if mid is None:
        mid = (views + 1) // 2 if views >= 2 and VIEW_THREADS >= 2 else views
    if mid <= 0 or mid >= views:
        run(0, views)
        return
    if not _POOL:
        _POOL.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="raster-views"))
    second = _POOL[0].submit(run, mid, views)
    run(0, mid)
    second.result()

# Coverage (no gradients)


def _kernels():
    """The numba kernels (imported, and compiled or loaded from the disk cache, at first use)."""
    try:
        from models.raster import _kernels
    except ImportError as exc:  # pragma: no cover - numba is a project dependency
        raise RasteriserUnavailable(
            f"the CPU rasteriser needs numba ({exc}): pip install numba"
        ) from exc
    return _kernels


def coverage_numba(clip: np.ndarray, faces: np.ndarray, resolution: tuple[int, int]) -> np.ndarray:
    """Triangle id per pixel ``(B, H, W)`` int64 (-1 empty) for ``clip`` ``(B, V, 4)`` float32.

    Both windings are drawn (no culling); the nearest NDC depth wins; triangles with a vertex
    behind the camera are skipped.
    """
    h, w = resolution
    b = clip.shape[0]
    tri = np.full((b, h, w), -1, dtype=np.int32)
    zbuf = np.full((b, h, w), np.inf, dtype=np.float32)
    clip = np.ascontiguousarray(clip, dtype=np.float32)
    faces = np.ascontiguousarray(faces, dtype=np.int32)
    cover = _kernels().cover
    over_views(lambda lo, hi: cover(clip[lo:hi], faces, h, w, tri[lo:hi], zbuf[lo:hi]), b)
    return tri.astype(np.int64)


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
            raise RasteriserUnavailable(
                "EGL coverage needs moderngl: pip install moderngl"
            ) from exc
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
            vao = ctx.vertex_array(
                prog, [(vbo, "4f", "in_clip")], index_buffer=ibo, index_element_size=4
            )
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


# Differentiable parts


def face_neighbours(faces: torch.Tensor | np.ndarray) -> np.ndarray:
    """``(F, 3)`` int64: the face across the edge opposite each corner, -1 on boundary edges.

    Edges shared by more than two faces (non-manifold) count as boundary edges.
    """
    from models.geometry.remesh import edges_unique

    faces = np.asarray(faces.detach().cpu().numpy() if isinstance(faces, torch.Tensor) else faces)
    if faces.shape[0] == 0:
        return np.zeros((0, 3), np.int64)
    # The remesher's linear edge map (a bucket sort) instead of sorting every half-edge: this
    # runs after each remeshing of an optimisation, 3.3 ms -> about 1 ms at 12k faces.
    edges, face_edges = edges_unique(faces, int(faces.max()) + 1)
    return _kernels().neighbours_across_edges(face_edges, len(edges))


class _BaryFn(torch.autograd.Function):
    """clip ``(B, V, 4)`` -> (bary ``(B, H, W, 3)``, depth ``(B, H, W)``) for fixed coverage."""

    @staticmethod
    def forward(ctx, clip, faces_np, tri_np):  # type: ignore[override]
        k = _kernels()
        clip_np = np.ascontiguousarray(clip.detach().cpu().numpy(), dtype=np.float32)
        bsz, h, w = tri_np.shape
        bary = np.zeros((bsz, h, w, 3), np.float32)
        depth = np.ones((bsz, h, w), np.float32)
        over_views(lambda lo, hi: k.bary_forward(clip_np[lo:hi], faces_np, tri_np[lo:hi],
                                                 bary[lo:hi], depth[lo:hi]), bsz)
        ctx.arrays = (clip_np, faces_np, tri_np, bary, depth)
        ctx.clip_meta = (clip.dtype, clip.device)
        return _torch(bary, clip.device, clip.dtype), _torch(depth, clip.device, clip.dtype)

    @staticmethod
    def backward(ctx, g_bary, g_depth):  # type: ignore[override]
        clip_np, faces_np, tri_np, bary, depth = ctx.arrays
        dtype, device = ctx.clip_meta
        gb = _np32(g_bary, bary.shape)
        gd = _np32(g_depth, depth.shape)
        g_clip = np.zeros(clip_np.shape, np.float64)
        backward = _kernels().bary_backward
        over_views(lambda lo, hi: backward(clip_np[lo:hi], faces_np, tri_np[lo:hi], bary[lo:hi],
                                           depth[lo:hi], gb[lo:hi], gd[lo:hi], g_clip[lo:hi]),
                   len(tri_np))
        return _torch(g_clip, device, dtype), None, None


class _InterpolateFn(torch.autograd.Function):
    """(attributes ``(1 or B, V, C)``, bary) -> ``(B, H, W, C)`` for fixed coverage."""

    @staticmethod
    def forward(ctx, attr, bary, faces_np, tri_np):  # type: ignore[override]
        attr_np = np.ascontiguousarray(attr.detach().cpu().numpy(), dtype=np.float32)
        bary_np = np.ascontiguousarray(bary.detach().cpu().numpy(), dtype=np.float32)
        bsz, h, w = tri_np.shape
        out = np.zeros((bsz, h, w, attr_np.shape[2]), np.float32)
        forward = _kernels().interp_forward

        def run(lo: int, hi: int) -> None:
            own = attr_np if len(attr_np) == 1 else attr_np[lo:hi]
            forward(own, faces_np, tri_np[lo:hi], bary_np[lo:hi], out[lo:hi])

        over_views(run, bsz)
        ctx.arrays = (attr_np, bary_np, faces_np, tri_np)
        ctx.meta = (attr.dtype, attr.device, bary.dtype, bary.device)
        return _torch(out, attr.device, attr.dtype)

    @staticmethod
    def backward(ctx, g_out):  # type: ignore[override]
        attr_np, bary_np, faces_np, tri_np = ctx.arrays
        adt, adev, bdt, bdev = ctx.meta
        need_attr, need_bary = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        go = _np32(g_out, tri_np.shape + (attr_np.shape[2],))
        g_attr = np.zeros(attr_np.shape if need_attr else (1, 1, 1), np.float64)
        g_bary = np.zeros(bary_np.shape if need_bary else (1, 1, 1, 3), np.float32)
        _kernels().interp_backward(
            attr_np, faces_np, tri_np, bary_np, go, g_attr, g_bary, need_attr, need_bary
        )
        ga = _torch(g_attr, adev, adt) if need_attr else None
        gb = _torch(g_bary, bdev, bdt) if need_bary else None
        return ga, gb, None, None


class _AntialiasFn(torch.autograd.Function):
    """(image ``(B, H, W, C)``, clip ``(B, V, 4)``) -> anti-aliased image.

    Each half of the views finds and blends its own silhouette pairs (pixel indices local to
    the half), in the same order as over the whole batch."""

    @staticmethod
    def forward(ctx, image, clip, faces_np, neigh_np, tri_np, depth_np):  # type: ignore[override]
        k = _kernels()
        clip_np = np.ascontiguousarray(clip.detach().cpu().numpy(), dtype=np.float32)
        shape = image.shape
        bsz = shape[0]
        img = np.ascontiguousarray(image.detach().cpu().numpy(), dtype=np.float32).reshape(
            bsz, -1, shape[-1]
        )
        out = img.copy()
        halves: dict[int, tuple] = {}

        def run(lo: int, hi: int) -> None:
            tri = tri_np[lo:hi]
            cap = int(
                np.count_nonzero(tri[:, :, 1:] != tri[:, :, :-1])
                + np.count_nonzero(tri[:, 1:] != tri[:, :-1])
            )
            pairs = k.silhouette_pairs(clip_np[lo:hi], faces_np, neigh_np, tri,
                                       depth_np[lo:hi], cap)
            front, back, _, _, t = pairs
            k.aa_forward(img[lo:hi].reshape(-1, shape[-1]), front, back, t,
                         out[lo:hi].reshape(-1, shape[-1]))
            halves[lo] = (hi, pairs)

        over_views(run, bsz)
        ctx.arrays = (img, clip_np, faces_np, halves, tri_np.shape)
        ctx.meta = (image.dtype, image.device, clip.dtype, clip.device)
        return _torch(out.reshape(shape), image.device, image.dtype)

    @staticmethod
    def backward(ctx, g_out):  # type: ignore[override]
        img, clip_np, faces_np, halves, (bsz, h, w) = ctx.arrays
        idt, idev, cdt, cdev = ctx.meta
        need_clip = ctx.needs_input_grad[1]
        go = _np32(g_out, None).reshape(img.shape)
        g_img = go.copy()
        g_clip = np.zeros(clip_np.shape if need_clip else (1, 1, 4), np.float64)
        backward = _kernels().aa_backward
        channels = img.shape[-1]

        def run(lo: int, hi: int) -> None:
            _, (front, back, face, edge, t) = halves[lo]
            backward(
                img[lo:hi].reshape(-1, channels),
                clip_np[lo:hi],
                faces_np,
                front,
                back,
                face,
                edge,
                t,
                h * w,
                w,
                h,
                go[lo:hi].reshape(-1, channels),
                g_img[lo:hi].reshape(-1, channels),
                g_clip[lo:hi] if need_clip else g_clip,
                need_clip,
            )

        # The same split as the forward pass: its pairs were found per half.
        over_views(run, bsz, mid=max(halves))
        gi = _torch(g_img.reshape(bsz, h, w, -1), idev, idt)
        gc = _torch(g_clip, cdev, cdt) if need_clip else None
        return gi, gc, None, None, None, None


def _torch(array: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A numpy result as a tensor on ``device`` with ``dtype`` (no copy when they already match)."""
    t = torch.from_numpy(array)
    if t.dtype != dtype:
        t = t.to(dtype)
    return t if device.type == "cpu" else t.to(device)


def _np32(grad: torch.Tensor | None, shape: tuple | None) -> np.ndarray:
    """An incoming gradient as a contiguous float32 array (zeros when autograd passed None)."""
    if grad is None:
        return np.zeros(shape, np.float32)
    return np.ascontiguousarray(grad.detach().cpu().numpy(), dtype=np.float32)


class CpuRasteriser:
    """The CPU backend: numba/EGL coverage, numba barycentrics, interpolation and silhouette
    anti-aliasing with hand-written gradients (see :mod:`models.raster._kernels`).

    ``coverage``: ``"numba"`` (default, no system libraries) or ``"egl"`` (OpenGL on Mesa
    llvmpipe; needs libEGL). Tensors may live on any device; the work runs on the CPU.
    """

    name = "cpu"
    differentiable_rasterisation = True

    def __init__(self, coverage: str = "numba") -> None:
        if coverage not in COVERAGE:
            raise ValueError(f"coverage must be one of {sorted(COVERAGE)}, got {coverage!r}")
        self.coverage = coverage
        self._neigh_faces: np.ndarray | None = None
        self._neigh: np.ndarray | None = None

    def rasterise(
        self, clip: torch.Tensor, faces: torch.Tensor, resolution: tuple[int, int]
    ) -> Rasterisation:
        """Rasterise ``clip`` ``(B, V, 4)`` or ``(V, 4)`` float32 triangles ``faces`` ``(F, 3)``.

        ``resolution`` is ``(H, W)``. Both windings are drawn. Returns a
        :class:`~models.raster.base.Rasterisation` whose ``bary`` and ``depth`` are
        differentiable with respect to ``clip``.
        """
        if clip.ndim == 2:
            clip = clip[None]
        if clip.ndim != 3 or clip.shape[-1] != 4:
            raise ValueError(f"clip must be (B, V, 4) or (V, 4), got {tuple(clip.shape)}")
        if faces.ndim != 2 or faces.shape[-1] != 3:
            raise ValueError(f"faces must be (F, 3), got {tuple(faces.shape)}")
        h, w = int(resolution[0]), int(resolution[1])
        faces_np = np.ascontiguousarray(faces.detach().cpu().numpy(), dtype=np.int64)
        tri_np = COVERAGE[self.coverage](clip.detach().cpu().numpy(), faces_np, (h, w))
        bary, depth = _BaryFn.apply(clip, faces_np, tri_np)
        return Rasterisation(
            tri_id=_torch(tri_np, clip.device, torch.int64),
            bary=bary,
            depth=depth,
            clip=clip,
            faces=_torch(faces_np, clip.device, torch.int64),
        )

    def interpolate(self, attributes: torch.Tensor, raster: Rasterisation) -> torch.Tensor:
        """Vertex attributes ``(V, C)`` or ``(B, V, C)`` -> ``(B, H, W, C)``, 0 where empty.

        Differentiable with respect to ``attributes`` and (through ``bary``) ``raster.clip``.
        """
        bsz = raster.tri_id.shape[0]
        if attributes.ndim == 2:
            attributes = attributes[None]
        if attributes.ndim != 3 or attributes.shape[0] not in (1, bsz):
            raise ValueError(
                f"attributes must be (V, C) or ({bsz}, V, C), got {tuple(attributes.shape)}"
            )
        return _InterpolateFn.apply(attributes, raster.bary, _faces_np(raster), _tri_np(raster))

    def antialias(self, image: torch.Tensor, raster: Rasterisation) -> torch.Tensor:
        """Blend ``image`` ``(B, H, W, C)`` across silhouette edges so gradients reach ``clip``.

        For every horizontally or vertically adjacent pixel pair with different triangle ids,
        the front pixel (smaller depth; any covered pixel beats an empty one) is followed toward
        the other pixel's centre; if it leaves its triangle through a silhouette edge (a
        boundary edge, or one whose two faces wind oppositely on screen) at fraction ``t`` of
        the way, the far pixel takes ``max(0, t - 1/2)`` of the front colour and the front pixel
        ``max(0, 1/2 - t)`` of the far colour. Differentiable w.r.t. ``image`` and ``clip``.
        """
        if image.ndim != 4 or image.shape[:3] != raster.tri_id.shape:
            raise ValueError(
                f"image {tuple(image.shape)} does not match raster {tuple(raster.tri_id.shape)}"
            )
        faces_np = _faces_np(raster)
        depth_np = np.ascontiguousarray(raster.depth.detach().cpu().numpy(), dtype=np.float32)
        return _AntialiasFn.apply(
            image, raster.clip, faces_np, self._neighbours(faces_np), _tri_np(raster), depth_np
        )

    def _neighbours(self, faces_np: np.ndarray) -> np.ndarray:
        # An optimisation loop rasterises the same faces many times: reuse the adjacency while
        # the face array is unchanged (comparing is far cheaper than rebuilding).
        cached = self._neigh_faces
        if cached is None or cached.shape != faces_np.shape or not np.array_equal(cached, faces_np):
            self._neigh = face_neighbours(faces_np)
            self._neigh_faces = faces_np.copy()
        return self._neigh


def _faces_np(raster: Rasterisation) -> np.ndarray:
    return np.ascontiguousarray(raster.faces.detach().cpu().numpy(), dtype=np.int64)


def _tri_np(raster: Rasterisation) -> np.ndarray:
    return np.ascontiguousarray(raster.tri_id.detach().cpu().numpy(), dtype=np.int64)
