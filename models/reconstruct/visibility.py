"""Which parts of a mesh the bundle's views see: the share of surface no camera observes.

The bundle's cameras sit at 5 degrees elevation, so tops above the cameras' height, bottoms and
the insides of cups are never seen; what is reconstructed there is a guess (flat membranes from
refinement, colours filled from neighbours). :func:`unseen_area_fraction` measures how much of an
asset is such a guess.
"""

from __future__ import annotations

import numpy as np
import torch
import trimesh

from models.bundle.cameras import BundleCameras
from models.bundle.spec import BundleSpec

#: NDC depth tolerance of the centroid visibility test (about 0.03 bundle units at the cameras).
SEEN_DEPTH_EPS = 3e-4
#: Render resolution of the visibility test (pixels per side).
SEEN_RESOLUTION = 256


def seen_faces(
    spec: BundleSpec,
    mesh: trimesh.Trimesh,
    *,
    resolution: int = SEEN_RESOLUTION,
    rasteriser=None,
) -> np.ndarray:
    """``(F,)`` bool: faces of ``mesh`` (bundle frame) that at least one of ``spec``'s views sees.

    A face is seen in a view when it covers a pixel of that view's render, or when it faces the
    camera and its centroid is not behind the rendered depth at its pixel (faces smaller than a
    pixel).
    """
    if rasteriser is None:
        from models.raster import get_rasteriser

        rasteriser = get_rasteriser("cpu")
    cams = BundleCameras.from_spec(spec)
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    homo = np.concatenate([vertices, np.ones((len(vertices), 1))], axis=1)
    clip = np.einsum("bij,vj->bvi", cams.mvp, homo).astype(np.float32)
    with torch.no_grad():
        raster = rasteriser.rasterise(torch.from_numpy(clip), torch.from_numpy(faces),
                                      (resolution, resolution))
    tri_id = raster.tri_id.cpu().numpy()
    depth = raster.depth.cpu().numpy()
    seen = np.zeros(len(faces), dtype=bool)
    seen[np.unique(tri_id[tri_id >= 0])] = True
    centroids = vertices[faces].mean(axis=1)
    normals = np.asarray(mesh.face_normals, dtype=np.float64)
    for view in range(len(cams)):
        towards = cams.eyes[view][None, :] - centroids
        facing = np.einsum("fi,fi->f", normals, towards) > 0
        c = np.concatenate([centroids, np.ones((len(faces), 1))], axis=1) @ cams.mvp[view].T
        ndc = c[:, :3] / c[:, 3:4]
        px = np.clip(np.round((ndc[:, 0] + 1) * resolution / 2 - 0.5), 0, resolution - 1)
        py = np.clip(np.round((1 - ndc[:, 1]) * resolution / 2 - 0.5), 0, resolution - 1)
        front = ndc[:, 2] <= depth[view, py.astype(int), px.astype(int)] + SEEN_DEPTH_EPS
        seen |= facing & front
    return seen


def unseen_area_fraction(
    spec: BundleSpec,
    mesh: trimesh.Trimesh,
    *,
    resolution: int = SEEN_RESOLUTION,
    rasteriser=None,
) -> float:
    """Share in [0, 1] of ``mesh``'s surface area that none of ``spec``'s views sees."""
    if len(mesh.faces) == 0:
        return 0.0
    seen = seen_faces(spec, mesh, resolution=resolution, rasteriser=rasteriser)
    areas = np.asarray(mesh.area_faces, dtype=np.float64)
    total = float(areas.sum())
    return float(areas[~seen].sum() / total) if total > 0 else 0.0


#: Pixels (at the bundle's tile size) a face centroid may fall outside a mask before it counts.
OUTSIDE_MASK_SLACK_PX = 2


def outside_mask_area_fraction(
    masks: np.ndarray, spec: BundleSpec, mesh: trimesh.Trimesh
) -> float:
    """Share in [0, 1] of ``mesh``'s surface area that projects outside some view's mask.

    ``masks``: ``(4, T, T)`` bool, the bundle's foreground masks. No point of the real object
    projects outside any mask, so this area is surface the views rule out: membranes spanning
    a gap, webs across a hole. Masks are dilated by :data:`OUTSIDE_MASK_SLACK_PX` so
    anti-aliased rims do not count.
    """
    from scipy.ndimage import binary_dilation

    if len(mesh.faces) == 0:
        return 0.0
    cams = BundleCameras.from_spec(spec)
    tile = masks.shape[1]
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    centroids = vertices[np.asarray(mesh.faces)].mean(axis=1)
    homo = np.concatenate([centroids, np.ones((len(centroids), 1))], axis=1)
    outside = np.zeros(len(centroids), dtype=bool)
    for view in range(len(cams)):
        grown = binary_dilation(masks[view], iterations=OUTSIDE_MASK_SLACK_PX)
        clip = homo @ cams.mvp[view].T
        ndc = clip[:, :2] / clip[:, 3:4]
        px = np.clip(np.round((ndc[:, 0] + 1) * tile / 2 - 0.5), 0, tile - 1).astype(int)
        py = np.clip(np.round((1 - ndc[:, 1]) * tile / 2 - 0.5), 0, tile - 1).astype(int)
        outside |= ~grown[py, px]
    areas = np.asarray(mesh.area_faces, dtype=np.float64)
    total = float(areas.sum())
    return float(areas[outside].sum() / total) if total > 0 else 0.0
