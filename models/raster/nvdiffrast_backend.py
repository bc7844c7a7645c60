"""nvdiffrast backend (CUDA): the same interface as the CPU rasteriser, on the GPU.

``nvdiffrast.torch`` is imported when a rasteriser is built, never at module import; the
``diffrp-nvdiffrast`` package on PyPI provides it (compiled at first use; NVIDIA source
licence). Images follow :mod:`models.raster.base`: row 0 at the top. nvdiffrast's own image
row 0 is ``y_ndc = -1`` (the bottom), so results are flipped vertically here.

Silhouette anti-aliasing, and with it the silhouette loss's gradient, comes by default from the
CPU backend's search (``silhouettes="walk"``), not from nvdiffrast's own ``antialias``. nvdiffrast
looks for the silhouette edge only among the edges of the triangle under the front pixel's
centre. Near a smooth object's silhouette the faces are seen edge-on and project to slivers
thinner than a pixel, so that centre usually lies in a face one or two rows inside, and the pair
is neither blended nor given a gradient. Measured on an H200 with
``benchmarks/backend_gradients.py`` (4 YCB objects, hull and true meshes, both phases):
nvdiffrast's own silhouette gradient had 0.34-0.51 times the CPU backend's norm at cosine
0.49-0.74, while the normal and depth terms agreed. With the CPU search the silhouette term
agrees too (norm ratio 0.97-1.00, cosine 0.99-1.00). The search walks from that centre across
non-silhouette edges to the silhouette. It runs on the CPU, on the rasterisation's triangle ids
and depths: the mug's fine phase took 2.7 s on the H200 against 1.8 s with nvdiffrast's own.
``silhouettes="native"`` keeps nvdiffrast's own, all on the GPU.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from models.raster.base import Rasterisation, RasteriserUnavailable
from models.raster.cpu import CpuRasteriser

#: What ``NvdiffrastRasteriser(silhouettes=...)`` accepts.
SILHOUETTE_SEARCHES = ("walk", "native")

INSTALL_HINT = (
    "the nvdiffrast rasteriser needs a CUDA GPU, a CUDA build of torch and nvdiffrast "
    "(pip install diffrp-nvdiffrast); use get_rasteriser('cpu') otherwise"
)


def nvdiffrast_available() -> bool:
    """True when CUDA is usable and ``nvdiffrast.torch`` imports."""
    if not torch.cuda.is_available():
        return False
    try:
        import nvdiffrast.torch  # noqa: F401
    except Exception:
        return False
    return True


@dataclass
class NvdiffrastRasterisation(Rasterisation):
    """A :class:`Rasterisation` that keeps nvdiffrast's own output for interpolate/antialias.

    ``native``: ``(B, H, W, 4)`` nvdiffrast ``rast`` (row 0 at the bottom);
    ``native_tri``: ``(F, 3)`` int32 CUDA faces.
    """

    native: torch.Tensor | None = None
    native_tri: torch.Tensor | None = None


class NvdiffrastRasteriser:
    """nvdiffrast behind the :class:`~models.raster.base.Rasteriser` interface (CUDA only).

    ``device``: the CUDA device to render on; inputs on another device are moved there.
    ``silhouettes``: how :meth:`antialias` finds silhouette edges, ``"walk"`` (the CPU
    backend's search, the default: refinement behaves the same on both backends) or
    ``"native"`` (nvdiffrast's own, on the GPU; see the module docstring for how they differ).
    """

    name = "nvdiffrast"
    differentiable_rasterisation = True

    def __init__(
        self, device: torch.device | str | None = None, silhouettes: str = "walk"
    ) -> None:
        if silhouettes not in SILHOUETTE_SEARCHES:
            raise ValueError(
                f"silhouettes must be one of {SILHOUETTE_SEARCHES}, got {silhouettes!r}"
            )
        self.silhouettes = silhouettes
        if not torch.cuda.is_available():
            raise RasteriserUnavailable(f"no CUDA device: {INSTALL_HINT}")
        try:
            import nvdiffrast.torch as dr
        except Exception as exc:
            raise RasteriserUnavailable(
                f"cannot import nvdiffrast.torch ({exc}): {INSTALL_HINT}"
            ) from exc
        self.device = torch.device(device) if device is not None else torch.device("cuda")
        if self.device.type != "cuda":
            raise RasteriserUnavailable(f"nvdiffrast renders on CUDA, got device {self.device}")
        self._dr = dr
        self._ctx = _cuda_context(dr, self.device)
        self._walk = CpuRasteriser() if silhouettes == "walk" else None

    def rasterise(
        self, clip: torch.Tensor, faces: torch.Tensor, resolution: tuple[int, int]
    ) -> Rasterisation:
        """Rasterise ``clip`` ``(B, V, 4)`` or ``(V, 4)`` float32 triangles ``faces`` ``(F, 3)``."""
        if clip.ndim == 2:
            clip = clip[None]
        clip = clip.to(self.device, torch.float32).contiguous()
        tri = faces.to(self.device, torch.int32).contiguous()
        h, w = int(resolution[0]), int(resolution[1])
        native, _ = self._dr.rasterize(self._ctx, clip, tri, resolution=[h, w])
        rast = native.flip(1)  # nvdiffrast's row 0 is the bottom
        u, v, zw, tid = rast.unbind(-1)
        tri_id = tid.round().to(torch.int64) - 1
        covered = tri_id >= 0
        bary = torch.stack([u, v, 1.0 - u - v], -1) * covered[..., None]
        depth = torch.where(covered, zw, torch.ones_like(zw))
        return NvdiffrastRasterisation(
            tri_id=tri_id,
            bary=bary,
            depth=depth,
            clip=clip,
            faces=tri.long(),
            native=native,
            native_tri=tri,
        )

    def interpolate(self, attributes: torch.Tensor, raster: Rasterisation) -> torch.Tensor:
        """Vertex attributes ``(V, C)`` or ``(B, V, C)`` -> ``(B, H, W, C)``, 0 where empty."""
        attributes = attributes.to(self.device, torch.float32).contiguous()
        raster = _native(raster)
        out, _ = self._dr.interpolate(attributes, raster.native, raster.native_tri)
        return out.flip(1)

    def antialias(self, image: torch.Tensor, raster: Rasterisation) -> torch.Tensor:
        """Silhouette anti-aliasing of ``image`` ``(B, H, W, C)``, on ``image``'s device.

        With ``silhouettes="walk"`` the silhouette pairs are found on the CPU (as the CPU
        backend does) and the result and its gradients come back to ``image``'s device.
        """
        if self._walk is not None:
            return self._walk.antialias(image, raster)
        raster = _native(raster)
        img = image.to(self.device, torch.float32).flip(1).contiguous()
        out = self._dr.antialias(img, raster.native, raster.clip, raster.native_tri)
        return out.flip(1)


def _cuda_context(dr, device: torch.device):
    """nvdiffrast's CUDA rasterising context on ``device``, its compiled plugin loaded.

    nvdiffrast builds its plugin with ``torch.utils.cpp_extension.load`` and then imports it by
    name. Recent torch releases load the built module without registering that name, so the
    import fails right after a successful build (seen with torch 2.11 on an H200). The build
    sits in torch's extension folder: that folder is put on ``sys.path`` and the context made
    once more, which imports the plugin without building it again.
    """
    try:
        return dr.RasterizeCudaContext(device=device)
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("nvdiffrast_plugin"):
            raise
        from torch.utils.cpp_extension import _get_build_directory

        folder = _get_build_directory(exc.name, verbose=False)
        if folder not in sys.path:
            sys.path.append(folder)
        return dr.RasterizeCudaContext(device=device)


def _native(raster: Rasterisation) -> NvdiffrastRasterisation:
    if not isinstance(raster, NvdiffrastRasterisation):
        raise ValueError("this Rasterisation did not come from the nvdiffrast backend")
    return raster
