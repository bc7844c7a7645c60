"""Bundle -> LRM input: the four colour views on white and the model's camera vectors.

Frames
------
The bundle frame (BUNDLE_SPEC.md) is right-handed, **+Y up**, front facing +Z; a camera at
azimuth ``a``, elevation ``e``, distance ``d`` sits at ``d (cos e sin a, sin e, cos e cos a)``.

The model frame (InstantMesh / PRM, ``spherical_camera_pose``) is right-handed, **+Z up**; a
camera at azimuth ``a`` sits at ``r (cos e cos a, cos e sin a, sin e)``. Both look at the origin
OpenGL-style (camera +z points from the origin to the eye, +y up in the image).

The rotation that takes the bundle frame onto the model frame and keeps every azimuth is the
cyclic axis swap ``model = (z_b, x_b, y_b)`` (:data:`MODEL_FROM_BUNDLE`); its inverse
``bundle = (y_m, z_m, x_m)`` is what Kiss3DGen applies to the LRM's vertices
(``rotate_x(pi/2)`` then ``rotate_y(pi/2)`` on row vectors) before ISOMER, which renders the
bundle azimuths 0/90/180/270 unchanged. So bundle view ``k`` is fed with the model camera at
the same azimuth and elevation.

Scale: the views are fed unchanged while the model assumes its own camera radius ``r`` (3.5 for
PRM, 4.0 for InstantMesh) instead of the bundle's distance ``d`` (4.5 by default). An object
seen at distance ``d`` with a given angular size is reconstructed ``r / d`` times as large, so
model-frame points map back to the bundle by ``bundle = (d / r) * R^T model``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from models.bundle.spec import Bundle

#: ``p_model = MODEL_FROM_BUNDLE @ p_bundle`` (before scaling): x_m = z_b, y_m = x_b, z_m = y_b.
MODEL_FROM_BUNDLE = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def bundle_to_model(points: np.ndarray, bundle_distance: float, model_radius: float) -> np.ndarray:
    """``(N, 3)`` bundle-frame points -> ``(N, 3)`` model-frame points (z up, model scale)."""
    return (np.asarray(points) @ MODEL_FROM_BUNDLE.T) * (model_radius / bundle_distance)


def model_to_bundle(points: np.ndarray, bundle_distance: float, model_radius: float) -> np.ndarray:
    """``(N, 3)`` model-frame points -> ``(N, 3)`` bundle-frame points (+Y up, bundle scale)."""
    return (np.asarray(points) @ MODEL_FROM_BUNDLE) * (bundle_distance / model_radius)


def model_camera_to_world(azimuth_deg: float, elevation_deg: float, radius: float) -> np.ndarray:
    """``(4, 4)`` float64 camera-to-world of a model-frame camera looking at the origin, z up.

    Columns are ``x_cam, y_cam, z_cam, eye`` with ``z_cam = eye / |eye|``,
    ``x_cam = normalize(up x z_cam)``, ``y_cam = z_cam x x_cam`` and ``up = +Z``.
    """
    a, e = math.radians(azimuth_deg), math.radians(elevation_deg)
    eye = radius * np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])
    z = eye / np.linalg.norm(eye)
    x = np.cross([0.0, 0.0, 1.0], z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w


def camera_vectors(
    azimuths: tuple[float, ...] | list[float], elevation: float, radius: float, fov: float
) -> torch.Tensor:
    """``(V, 16)`` float32 model camera vectors: the 3x4 camera-to-world rows, then fx, fy, cx, cy.

    Intrinsics are normalised by the image side: ``fx = fy = 0.5 / tan(fov / 2)``,
    ``cx = cy = 0.5``.
    """
    focal = 0.5 / math.tan(math.radians(fov) / 2.0)
    rows = [
        np.concatenate([model_camera_to_world(a, elevation, radius)[:3].reshape(-1),
                        [focal, focal, 0.5, 0.5]])
        for a in azimuths
    ]
    return torch.tensor(np.stack(rows), dtype=torch.float32)


def bundle_views(bundle: Bundle, size: int) -> torch.Tensor:
    """``(V, 3, size, size)`` float32 in [0, 1]: the colour tiles masked onto white, resized.

    The mask is the bundle's foreground rule (normal row); the resize is bicubic with
    antialiasing (as the reference pipelines' resize), clamped to [0, 1].
    """
    colours = torch.from_numpy(bundle.colours())  # (V, T, T, 3)
    mask = torch.from_numpy(bundle.masks()).unsqueeze(-1).to(colours.dtype)
    views = (colours * mask + (1.0 - mask)).permute(0, 3, 1, 2).contiguous()
    if views.shape[-1] != size:
        views = F.interpolate(views, size=(size, size), mode="bicubic", antialias=True,
                              align_corners=False)
    return views.clamp(0.0, 1.0)


def model_inputs(
    bundle: Bundle, input_size: int, radius: float, fov: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(1, V, 3, S, S)`` and cameras ``(1, V, 16)`` for one bundle.

    Azimuths and elevation come from the bundle's sidecar; the radius is the model's own
    (see the module docstring for why the bundle's distance only rescales the output); the
    field of view is the sidecar's unless ``fov`` is given.
    """
    spec = bundle.spec
    cams = camera_vectors(spec.azimuths, spec.elevation, radius, spec.fov if fov is None else fov)
    return bundle_views(bundle, input_size).unsqueeze(0), cams.unsqueeze(0)
