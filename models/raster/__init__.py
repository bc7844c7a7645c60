"""Rasterisers behind one interface (see :mod:`models.raster.base`), chosen by name.

``RASTERISERS`` maps a backend name to its class; :func:`get_rasteriser` builds one, with
``"auto"`` picking nvdiffrast when CUDA and the package are usable and the CPU backend
otherwise. Importing this package never imports numba, moderngl or nvdiffrast.
"""

from __future__ import annotations

import torch

from models.raster.base import Rasterisation, Rasteriser, RasteriserUnavailable
from models.raster.cpu import CpuRasteriser
from models.raster.nvdiffrast_backend import NvdiffrastRasteriser, nvdiffrast_available

RASTERISERS: dict[str, type] = {"cpu": CpuRasteriser, "nvdiffrast": NvdiffrastRasteriser}

__all__ = [
    "RASTERISERS",
    "CpuRasteriser",
    "NvdiffrastRasteriser",
    "Rasterisation",
    "Rasteriser",
    "RasteriserUnavailable",
    "get_rasteriser",
]


def get_rasteriser(
    name: str = "auto", device: torch.device | str | None = None, **kwargs
) -> Rasteriser:
    """A rasteriser by name: ``"cpu"``, ``"nvdiffrast"`` or ``"auto"``.

    ``auto`` picks nvdiffrast when ``device`` is CUDA (or ``None`` with CUDA available) and
    nvdiffrast imports, else the CPU backend. ``kwargs`` go to the backend's constructor
    (``coverage="egl"`` for the CPU backend). Raises :class:`RasteriserUnavailable` when a
    named backend cannot run here, ``ValueError`` for an unknown name.
    """
    if name == "auto":
        dev = torch.device(device) if device is not None else None
        wants_cuda = (dev is None and torch.cuda.is_available()) or (
            dev is not None and dev.type == "cuda"
        )
        name = "nvdiffrast" if wants_cuda and nvdiffrast_available() else "cpu"
    if name not in RASTERISERS:
        raise ValueError(
            f"unknown rasteriser {name!r}; choose one of {sorted(RASTERISERS)} or auto"
        )
    if name == "nvdiffrast" and device is not None:
        kwargs.setdefault("device", device)
    return RASTERISERS[name](**kwargs)
