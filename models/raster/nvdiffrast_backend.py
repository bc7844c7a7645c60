"""nvdiffrast backend (CUDA): the same interface as the CPU rasteriser, on the GPU.

``nvdiffrast.torch`` is imported when a rasteriser is built, never at module import; the
``diffrp-nvdiffrast`` package on PyPI provides it (compiled at first use; NVIDIA source
licence). Images follow :mod:`models.raster.base`: row 0 at the top. nvdiffrast's own image
row 0 is ``y_ndc = -1`` (the bottom), so results are flipped vertically here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.raster.base import Rasterisation, RasteriserUnavailable

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
    """

    name = "nvdiffrast"
    differentiable_rasterisation = True

    def __init__(self, device: torch.device | str | None = None) -> None:
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
        self._ctx = dr.RasterizeCudaContext(device=self.device)

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
        """nvdiffrast's silhouette anti-aliasing of ``image`` ``(B, H, W, C)``."""
        raster = _native(raster)
        img = image.to(self.device, torch.float32).flip(1).contiguous()
        out = self._dr.antialias(img, raster.native, raster.clip, raster.native_tri)
        return out.flip(1)


def _native(raster: Rasterisation) -> NvdiffrastRasterisation:
    if not isinstance(raster, NvdiffrastRasterisation):
        raise ValueError("this Rasterisation did not come from the nvdiffrast backend")
    return raster
