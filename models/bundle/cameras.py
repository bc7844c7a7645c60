"""The bundle's cameras: look-at views around the origin and an OpenGL perspective projection.

Conventions (BUNDLE_SPEC.md): world frame right-handed, +Y up, front +Z; azimuth 0 sits on +Z,
azimuth 90 on +X; cameras look at the origin along ``-z_cam``. Clip space is OpenGL's
(``x_ndc`` right, ``y_ndc`` up, depth in [-1, 1]); image row 0 is the top (``y_ndc = +1``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from models.bundle.spec import BundleSpec

NEAR = 0.1
FAR = 100.0


def camera_eye(azimuth_deg: float, elevation_deg: float, distance: float) -> np.ndarray:
    """Camera centre ``(3,)`` float64 in the world frame."""
    a, e = math.radians(azimuth_deg), math.radians(elevation_deg)
    return distance * np.array([math.cos(e) * math.sin(a), math.sin(e), math.cos(e) * math.cos(a)])


def look_at(eye: np.ndarray, up: tuple[float, float, float] = (0.0, 1.0, 0.0)) -> np.ndarray:
    """World-to-camera ``(4, 4)`` float64 for a camera at ``eye`` looking at the origin.

    Rows of the rotation are ``x_cam``, ``y_cam``, ``z_cam`` with ``z_cam = normalize(eye)``.
    """
    z = eye / np.linalg.norm(eye)
    x = np.cross(np.asarray(up, dtype=np.float64), z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    m = np.eye(4)
    m[:3, :3] = np.stack([x, y, z])
    m[:3, 3] = -m[:3, :3] @ eye
    return m


def perspective(fov_deg: float, near: float = NEAR, far: float = FAR) -> np.ndarray:
    """OpenGL projection ``(4, 4)`` float64, vertical field of view ``fov_deg``, aspect 1."""
    f = 1.0 / math.tan(math.radians(fov_deg) / 2.0)
    return np.array(
        [
            [f, 0.0, 0.0, 0.0],
            [0.0, f, 0.0, 0.0],
            [0.0, 0.0, (far + near) / (near - far), 2.0 * far * near / (near - far)],
            [0.0, 0.0, -1.0, 0.0],
        ]
    )


@dataclass(frozen=True)
class BundleCameras:
    """The cameras of a bundle's views, all ``float64``.

    ``world_to_cam``: ``(N, 4, 4)``; ``projection``: ``(4, 4)``; ``eyes``: ``(N, 3)`` world frame;
    ``mvp``: ``(N, 4, 4)`` world -> clip; ``tile``: pixels per side.
    """

    world_to_cam: np.ndarray
    projection: np.ndarray
    eyes: np.ndarray
    tile: int

    @property
    def mvp(self) -> np.ndarray:
        return self.projection[None] @ self.world_to_cam

    @property
    def rotations(self) -> np.ndarray:
        """``(N, 3, 3)`` world -> camera rotations (rows x_cam, y_cam, z_cam)."""
        return self.world_to_cam[:, :3, :3]

    @property
    def focal_px(self) -> float:
        """Focal length in pixels (955.4 for 512-pixel tiles and 30 degrees)."""
        return (self.tile / 2.0) / (1.0 / self.projection[1, 1])

    def __len__(self) -> int:
        return self.world_to_cam.shape[0]

    @classmethod
    def from_spec(cls, spec: BundleSpec) -> BundleCameras:
        return cls.orbit(spec.azimuths, spec.elevation, spec.distance, spec.fov, spec.tile)

    @classmethod
    def orbit(
        cls,
        azimuths: tuple[float, ...] | list[float],
        elevation: float,
        distance: float,
        fov: float,
        tile: int,
    ) -> BundleCameras:
        """Cameras at the given azimuths (degrees), one elevation, one distance."""
        eyes = np.stack([camera_eye(a, elevation, distance) for a in azimuths])
        w2c = np.stack([look_at(e) for e in eyes])
        return cls(world_to_cam=w2c, projection=perspective(fov), eyes=eyes, tile=tile)
