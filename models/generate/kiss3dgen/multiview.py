"""Kiss3DGen's coarse bundle for image-to-3D: Zero123++'s six views -> LRM mesh -> bundle.

The centred picture goes to Zero123++ (:mod:`models.generate.kiss3dgen.zero123plus`), its six
views to the LRM (:mod:`models.reconstruct.lrm`) with the cameras Zero123++ renders them from
(azimuths 30..330 degrees, elevations 20 / -10 degrees, the model's own camera radius, a
30-degree field of view, as InstantMesh feeds them), and the LRM's mesh is rendered with
Kiss3DGen's cameras by the project's renderer into the coarse bundle that Flux then redraws.

Frames: the LRM's model frame is z-up with the input view's camera on +x; the bundle frame is
y-up with the front (azimuth 0) camera on +z. ``bundle = model @ MODEL_FROM_BUNDLE`` maps one
onto the other keeping azimuths (see :mod:`models.reconstruct.lrm.cameras`), so the picture's
view is the bundle's front view. The renderer normalises the mesh into the bundle frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import trimesh

from models.bundle.spec import Bundle, BundleSpec
from models.generate.kiss3dgen.zero123plus import VIEW_AZIMUTHS, VIEW_ELEVATIONS

#: Field of view (degrees) of Zero123++'s views, as InstantMesh gives them to its LRM.
ZERO123PLUS_FOV = 30.0


@dataclass
class MultiviewCoarse:
    """What :func:`coarse_bundle_from_picture` made."""

    bundle: Bundle
    """The coarse bundle: the LRM mesh rendered with Kiss3DGen's cameras."""
    views: np.ndarray
    """``(6, s, s, 3)`` uint8: Zero123++'s views in grid order."""
    mesh: trimesh.Trimesh
    """The LRM mesh in the bundle frame's orientation (y up, front +z), model scale."""


def zero123plus_cameras(radius: float, fov: float = ZERO123PLUS_FOV) -> torch.Tensor:
    """``(6, 16)`` float32 LRM camera vectors of Zero123++'s six views (model frame, z up):
    the 3x4 camera-to-world rows, then normalised ``fx, fy, cx, cy``."""
    from models.reconstruct.lrm.cameras import model_camera_to_world

    focal = 0.5 / math.tan(math.radians(fov) / 2.0)
    rows = [np.concatenate([model_camera_to_world(a, e, radius)[:3].reshape(-1),
                            [focal, focal, 0.5, 0.5]])
            for a, e in zip(VIEW_AZIMUTHS, VIEW_ELEVATIONS, strict=True)]
    return torch.tensor(np.stack(rows), dtype=torch.float32)


@torch.no_grad()
def lrm_mesh_from_views(views: np.ndarray, lrm_path: str | Path, variant: str, device: str,
                        grid_res: int | None = None) -> trimesh.Trimesh:
    """The LRM's mesh of six Zero123++ views (``(6, s, s, 3)`` uint8, grid order).

    Returns vertices in the bundle frame's orientation (y up, front +z) at the model's scale,
    with the colour head's vertex colours. Raises ``FileNotFoundError`` (missing checkpoint),
    :class:`models.reconstruct.lrm.model.CheckpointError` and
    :class:`models.reconstruct.lrm.model.EmptySurfaceError` as the LRM does."""
    import torch.nn.functional as F

    from models.reconstruct.lrm.cameras import MODEL_FROM_BUNDLE
    from models.reconstruct.lrm.reconstruct import load_cached

    model = load_cached(lrm_path, variant, device)
    cfg = model.config
    dtype = next(model.parameters()).dtype
    images = torch.from_numpy(views).permute(0, 3, 1, 2).float() / 255.0
    if images.shape[-1] != cfg.input_size:
        images = F.interpolate(images, size=(cfg.input_size, cfg.input_size), mode="bicubic",
                               antialias=True, align_corners=False).clamp(0.0, 1.0)
    cameras = zero123plus_cameras(cfg.camera_radius)
    planes = model.forward_planes(images[None].to(device, dtype), cameras[None].to(device, dtype))
    mesh = model.extract_mesh(planes, grid_res=grid_res)
    vertices = mesh.vertices.cpu().double().numpy() @ MODEL_FROM_BUNDLE
    colours = np.round(mesh.colours.cpu().numpy() * 255.0).astype(np.uint8)
    rgba = np.concatenate([colours, np.full((len(colours), 1), 255, np.uint8)], axis=1)
    return trimesh.Trimesh(vertices=vertices.astype(np.float32), faces=mesh.faces.cpu().numpy(),
                           vertex_colors=rgba, process=False)


def coarse_bundle_from_picture(picture: np.ndarray, seed: int, tile: int, *,
                               zero123_path: str | Path, lrm_path: str | Path,
                               lrm_variant: str, device: torch.device, steps: int,
                               guidance: float, distance: float,
                               dtype: torch.dtype = torch.float32) -> MultiviewCoarse:
    """Zero123++ views of ``picture`` (``(S, S, 3)`` uint8, the object centred on white),
    their LRM mesh, and that mesh rendered as a ``tile``-pixel bundle at camera ``distance``
    (sidecar ``extra``: ``coarse: zero123plus+lrm``, the two weights paths). Zero123++ runs
    in ``dtype`` on ``device``."""
    from dataclasses import replace

    from models.generate.kiss3dgen.zero123plus import generate_views, get_zero123plus
    from models.render.views import render_bundle

    model = get_zero123plus(Path(zero123_path), device, dtype)
    views = generate_views(model, picture, seed, steps=steps, guidance=guidance)
    mesh = lrm_mesh_from_views(views, lrm_path, lrm_variant, str(device))
    bundle = render_bundle(mesh, spec=BundleSpec(tile=tile, distance=distance), up="y")
    extra = dict(bundle.spec.extra)
    extra.update(coarse="zero123plus+lrm", zero123_path=str(zero123_path),
                 lrm_path=str(lrm_path), lrm_variant=lrm_variant)
    bundle.spec = replace(bundle.spec, extra=extra)
    return MultiviewCoarse(bundle=bundle, views=views, mesh=mesh)
