"""The rasteriser interface shared by every backend.

A backend turns clip-space triangles into per-pixel coverage (:class:`Rasterisation`),
interpolates vertex attributes differentiably, and anti-aliases silhouettes so that image
losses reach vertex positions. Images are ``(B, H, W, C)`` with row 0 at the top
(``y_ndc = +1``) and column 0 at the left (``x_ndc = -1``); pixel centres sit at
``x = 2(i+0.5)/W - 1``, ``y = 1 - 2(j+0.5)/H``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


class RasteriserUnavailable(RuntimeError):
    """The chosen backend cannot run here (missing package, no GPU, no EGL)."""


@dataclass
class Rasterisation:
    """Per-pixel coverage of a batch of renders.

    ``tri_id``: ``(B, H, W)`` int64 index into ``faces``, ``-1`` where nothing was drawn.
    ``bary``: ``(B, H, W, 3)`` float32 perspective-correct barycentrics of the covering triangle
    (0 where empty); differentiable with respect to ``clip`` where the backend supports it.
    ``depth``: ``(B, H, W)`` float32 NDC depth ``z/w`` in [-1, 1] (1 where empty).
    ``clip``: ``(B, V, 4)`` the clip-space positions that were rasterised.
    ``faces``: ``(F, 3)`` int64 vertex indices.
    """

    tri_id: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor
    clip: torch.Tensor
    faces: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        """``(B, H, W)`` bool: pixels covered by a triangle."""
        return self.tri_id >= 0


class Rasteriser(Protocol):
    """What every backend provides (see :data:`models.raster.RASTERISERS`)."""

    name: str
    differentiable_rasterisation: bool

    def rasterise(
        self, clip: torch.Tensor, faces: torch.Tensor, resolution: tuple[int, int]
    ) -> Rasterisation:
        """Rasterise ``clip`` ``(B, V, 4)`` (or ``(V, 4)``) triangles ``faces`` ``(F, 3)``."""
        ...

    def interpolate(self, attributes: torch.Tensor, raster: Rasterisation) -> torch.Tensor:
        """Vertex attributes ``(V, C)`` or ``(B, V, C)`` -> ``(B, H, W, C)``, 0 where empty.

        Differentiable with respect to ``attributes`` and to ``raster.clip``.
        """
        ...

    def antialias(self, image: torch.Tensor, raster: Rasterisation) -> torch.Tensor:
        """Blend ``image`` ``(B, H, W, C)`` across silhouette edges so gradients reach ``clip``."""
        ...
