"""Studio-lit pictures of a finished asset: a 3/4 thumbnail and an animated turntable.

The lighting is a fixed three-point rig in camera space (key upper left, fill right, rim from
behind above) plus ambient, applied to the unlit base colour in linear light at render time;
nothing of it is baked into the asset's texture. Meshes are in any y-up frame; they are
normalised into the bundle frame for framing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import trimesh

from models.colour import linear_to_srgb, srgb_to_linear

if TYPE_CHECKING:
    from models.raster.base import Rasteriser

#: Camera-space light directions (towards the light) and intensities of the studio rig.
STUDIO_LIGHTS = (
    (np.array([-0.5, 0.6, 0.62]), 0.75),  # key, upper left
    (np.array([0.7, 0.1, 0.7]), 0.30),  # fill, right
    (np.array([0.0, 0.6, -0.8]), 0.35),  # rim, behind above
)
STUDIO_AMBIENT = 0.28
#: Backdrop colour of thumbnails and turntables (sRGB 0..255): light grey, so white parts read.
BACKDROP = (236, 236, 236)
THUMBNAIL_AZIMUTH = 45.0
THUMBNAIL_ELEVATION = 20.0
TURNTABLE_ELEVATION = 15.0
#: Milliseconds each turntable frame is shown (36 frames: a 3.6 s turn).
TURNTABLE_FRAME_MS = 100


def studio_views(
    mesh: trimesh.Trimesh,
    azimuths: list[float],
    elevations: list[float],
    size: int,
    *,
    rasteriser: Rasteriser | None = None,
) -> np.ndarray:
    """Studio-lit views ``(N, size, size, 3)`` uint8 sRGB over :data:`BACKDROP`, from cameras at
    the given azimuths/elevations (degrees) at the bundle's default distance and fov."""
    from models.bundle.spec import BundleSpec
    from models.geometry.mesh import normalise_mesh
    from models.render.views import orbit_cameras, render_views

    spec = BundleSpec(tile=size)
    render = render_views(
        normalise_mesh(mesh)[0], orbit_cameras(azimuths, elevations, spec), rasteriser=rasteriser
    )
    return studio_shade(render.colours(), render.normals(), render.coverage)


def studio_shade(colours: np.ndarray, normals: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """Light sRGB colours ``(N, H, W, 3)`` in [0, 1] with camera-space unit normals
    ``(N, H, W, 3)``; composite over :data:`BACKDROP` by ``coverage`` ``(N, H, W)``.
    Returns ``(N, H, W, 3)`` uint8."""
    light = np.full(coverage.shape, STUDIO_AMBIENT)
    for direction, intensity in STUDIO_LIGHTS:
        d = direction / np.linalg.norm(direction)
        light += intensity * np.clip(np.einsum("nhwc,c->nhw", normals, d), 0.0, 1.0)
    lit = linear_to_srgb(np.clip(srgb_to_linear(colours) * light[..., None], 0.0, 1.0))
    alpha = np.clip(coverage, 0.0, 1.0)[..., None]
    out = lit * alpha + (np.asarray(BACKDROP) / 255.0) * (1.0 - alpha)
    return np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)


def thumbnail(
    mesh: trimesh.Trimesh,
    path: str | Path,
    *,
    size: int = 512,
    rasteriser: Rasteriser | None = None,
) -> Path:
    """Write a ``size`` x ``size`` PNG of ``mesh``, studio-lit, from the 3/4 view (azimuth 45,
    elevation 20 degrees). Returns ``path``."""
    from PIL import Image

    (view,) = studio_views(
        mesh, [THUMBNAIL_AZIMUTH], [THUMBNAIL_ELEVATION], size, rasteriser=rasteriser
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(view, "RGB").save(path, format="PNG")
    return path


def turntable(
    mesh: trimesh.Trimesh,
    path: str | Path,
    *,
    frames: int = 36,
    size: int = 256,
    rasteriser: Rasteriser | None = None,
) -> Path:
    """Write an animated, looping WebP: ``frames`` studio-lit views one turn around ``mesh``
    (azimuth 0 to 360 degrees, elevation 15), :data:`TURNTABLE_FRAME_MS` each. Returns
    ``path``."""
    from PIL import Image

    if frames < 1:
        raise ValueError(f"a turntable needs at least 1 frame, got {frames}")
    azimuths = [360.0 * k / frames for k in range(frames)]
    views = studio_views(
        mesh, azimuths, [TURNTABLE_ELEVATION] * frames, size, rasteriser=rasteriser
    )
    images = [Image.fromarray(v, "RGB") for v in views]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(
        path,
        format="WEBP",
        save_all=True,
        append_images=images[1:],
        duration=TURNTABLE_FRAME_MS,
        loop=0,
        quality=85,
    )
    return path
