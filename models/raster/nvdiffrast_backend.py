"""nvdiffrast backend (CUDA): the same interface as the CPU rasteriser, on the GPU.

``nvdiffrast.torch`` is imported when a rasteriser is built, never at module import; the
``diffrp-nvdiffrast`` package on PyPI provides it (compiled at first use; NVIDIA source
licence). Images follow :mod:`models.raster.base`: row 0 at the top. nvdiffrast's own image
row 0 is ``y_ndc = -1`` (the bottom), so results are flipped vertically here.
"""

from __future__ import annotations

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
        rast, _ = self._dr.rasterize(self._ctx, clip, tri, resolution=[h, w])
        rast = rast.flip(1)  # nvdiffrast's row 0 is the bottom
        u, v, zw, tid = rast.unbind(-1)
        tri_id = tid.round().to(torch.int64) - 1
        covered = tri_id >= 0
        bary = torch.stack([u, v, 1.0 - u - v], -1) * covered[..., None]
        depth = torch.where(covered, zw, torch.ones_like(zw))
        out = Rasterisation(tri_id=tri_id, bary=bary, depth=depth, clip=clip, faces=tri.long())
        out.native = rast  # type: ignore[attr-defined]  # nvdiffrast's own output, bottom row first
        out.native_tri = tri  # type: ignore[attr-defined]
        return out

    def interpolate(self, attributes: torch.Tensor, raster: Rasterisation) -> torch.Tensor:
        """Vertex attributes ``(V, C)`` or ``(B, V, C)`` -> ``(B, H, W, C)``, 0 where empty."""
        attributes = attributes.to(self.device, torch.float32).contiguous()
        native = getattr(raster, "native", None)
        if native is None:
            raise ValueError("raster did not come from the nvdiffrast backend")
        out, _ = self._dr.interpolate(attributes, native, raster.native_tri)  # type: ignore[attr-defined]
        return out.flip(1)

    def antialias(self, image: torch.Tensor, raster: Rasterisation) -> torch.Tensor:
        """nvdiffrast's silhouette anti-aliasing of ``image`` ``(B, H, W, C)``."""
        native = getattr(raster, "native", None)
        if native is None:
            raise ValueError("raster did not come from the nvdiffrast backend")
        img = image.to(self.device, torch.float32).flip(1).contiguous()
        out = self._dr.antialias(img, native, raster.clip, raster.native_tri)  # type: ignore[attr-defined]
        return out.flip(1)
