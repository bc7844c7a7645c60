"""The preview sheet of a finished asset: its 4 bundle views and a 3/4 view, unlit and shaded."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import trimesh

from models.colour import linear_to_srgb, srgb_to_linear

if TYPE_CHECKING:
    from models.raster.base import Rasteriser


#: The 3/4 view of the preview sheet (degrees).
PREVIEW_34_AZIMUTH = 45.0


PREVIEW_34_ELEVATION = 20.0


def preview_caption_height(tile: int) -> int:
    """Height in pixels of the preview sheet's caption strip for a ``tile``."""
    return max(14, tile // 12)


def preview_sheet(
    mesh: trimesh.Trimesh,
    path: str | Path,
    *,
    tile: int = 256,
    rasteriser: Rasteriser | None = None,
) -> Path:
    """Write a PNG of the asset: the 4 bundle views and a 3/4 view, unlit and shaded, labelled.

    ``mesh`` is normalised into the bundle frame for framing (bounding box centred, longest
    side 1.8) and rendered over white with the default bundle cameras at ``tile`` pixels per
    view; the 3/4 view sits at azimuth 45, elevation 20 degrees. Row 1 is the unlit base colour
    (what the bundle's colour row shows); row 2 the same colour shaded by a fixed key light in
    camera space, so the shape reads even for a uniformly coloured asset. Under a caption strip
    of :func:`preview_caption_height` pixels, the sheet is ``caption + 2 * tile`` high and
    ``5 * tile`` wide. Returns ``path``.
    """
    from PIL import Image, ImageDraw, ImageFont

    from models.bundle.spec import BundleSpec
    from models.geometry.mesh import normalise_mesh
    from models.render.views import orbit_cameras, render_views

    spec = BundleSpec(tile=tile)
    azimuths = [*spec.azimuths, PREVIEW_34_AZIMUTH]
    elevations = [spec.elevation] * len(spec.azimuths) + [PREVIEW_34_ELEVATION]
    render = render_views(
        normalise_mesh(mesh)[0], orbit_cameras(azimuths, elevations, spec), rasteriser=rasteriser
    )
    views = render.colour_tiles()
    shaded = _shade(render.colours(), render.normals(), render.coverage)
    labels = [f"view {i} (az {a:g})" for i, a in enumerate(spec.azimuths)]
    labels.append(f"3/4 (az {PREVIEW_34_AZIMUTH:g}, el {PREVIEW_34_ELEVATION:g})")

    caption = preview_caption_height(tile)
    try:
        font = ImageFont.load_default(size=max(10, int(caption * 0.7)))
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        font = ImageFont.load_default()
    sheet = Image.new("RGB", (tile * len(views), 2 * tile + caption), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, label in enumerate(labels):
        sheet.paste(Image.fromarray(views[i], "RGB"), (i * tile, caption))
        sheet.paste(Image.fromarray(shaded[i], "RGB"), (i * tile, caption + tile))
        draw.text((i * tile + 4, 2), label, fill=(0, 0, 0), font=font)
        if i:
            # A divider in the caption strip only: the tiles stay exact renders.
            draw.line([(i * tile, 0), (i * tile, caption - 1)], fill=(200, 200, 200))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG")
    return path


#: Key light of the shaded preview row, camera space (from the upper left, towards the object).
PREVIEW_LIGHT = np.array([-0.45, 0.55, 0.70]) / np.linalg.norm([-0.45, 0.55, 0.70])


def _shade(colours: np.ndarray, normals: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """Lambert-shaded ``(N, T, T, 3)`` uint8 over white from sRGB colours ``(N, T, T, 3)`` in
    [0, 1], camera-space unit normals and coverage ``(N, T, T)`` in [0, 1]."""
    light = np.clip(np.einsum("nhwc,c->nhw", normals, PREVIEW_LIGHT), 0.0, 1.0)
    shade = (0.30 + 0.70 * light)[..., None]
    lit = linear_to_srgb(srgb_to_linear(colours) * shade)
    alpha = np.clip(coverage, 0.0, 1.0)[..., None]
    out = lit * alpha + (1.0 - alpha)
    return np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)
