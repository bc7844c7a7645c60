"""Colour projection: paint a mesh with the colour views of its bundle.

Each surface point (a vertex, or a texel of a baked texture) takes the weighted mean of the
bundle's colour tiles at its projection in every view that sees it:

* visibility by rasterisation: the point's eye depth must match the rasterised depth buffer
  (within a tolerance that grows with the pixel footprint and the surface slope);
* the bundle's foreground mask, eroded at silhouettes (edge pixels blend with the white
  background), must cover the point's pixel;
* weight = view weight x ``|cos(normal, direction to the camera)|**2`` (grazing views count
  little), as in LatentDreamer's view-aware texturing.

Points that no view sees are filled by propagation over the mesh graph (each ring of unseen
vertices takes the mean of its already-coloured neighbours). Colours are sRGB, like the bundle.
Meshes are in the bundle frame (+Y up, front +Z).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import trimesh
from scipy import ndimage, sparse

from models.bundle.cameras import BundleCameras
from models.bundle.memo import decoded_views
from models.bundle.spec import Bundle

if TYPE_CHECKING:
    from models.raster.base import Rasteriser

#: Visibility tolerance in eye-depth units (bundle frame) on top of the slope term.
DEPTH_TOLERANCE = 0.01
#: Surface slope (tan of the view angle) is capped here when widening the depth tolerance.
MAX_SLOPE = 3.0
#: Neighbouring pixels whose surfaces' eye depths differ by more than the larger of this
#: (bundle-frame units) and ``DEPTH_EDGE_PX`` pixel footprints lie on an occlusion edge.
DEPTH_EDGE = 0.05
DEPTH_EDGE_PX = 3.0
#: Colour of a connected piece of the mesh that no view sees at all (sRGB, mid grey).
UNSEEN_COLOUR = (0.5, 0.5, 0.5)


def default_erosion_px(tile: int) -> int:
    """Silhouette erosion for a tile size: 4 px at 512, never below 1."""
    return max(1, int(round(tile / 128)))


# --------------------------------------------------------------------------- public API


def project_colours(
    bundle: Bundle,
    mesh: trimesh.Trimesh,
    *,
    view_weights: tuple[float, ...] | list[float] | None = None,
    erosion_px: int | None = None,
    rasteriser: Rasteriser | None = None,
) -> trimesh.Trimesh:
    """A copy of ``mesh`` with vertex colours projected from ``bundle``'s colour row.

    ``mesh``: bundle frame (the frame the bundle was rendered in, +Y up, front +Z).
    ``view_weights``: one weight per view (default all 1). ``erosion_px``: pixels the masks are
    eroded at silhouettes (default :func:`default_erosion_px` of the tile). ``rasteriser``:
    any :class:`models.raster.base.Rasteriser` (default ``get_rasteriser()``).

    Returns a :class:`trimesh.Trimesh` with the same vertices and faces (``process=False``)
    and ``visual.vertex_colors`` ``(V, 4)`` uint8 sRGB, alpha 255.
    """
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    views = _ViewSampler(bundle, vertices, faces, view_weights, erosion_px, rasteriser)
    colours, seen = views.blend(vertices, np.asarray(mesh.vertex_normals, dtype=np.float64))
    colours = fill_unseen(colours, seen, faces)
    out = trimesh.Trimesh(vertices=vertices, faces=faces, process=False)
    rgba = np.concatenate([colours, np.ones((len(colours), 1))], axis=1)
    out.visual = trimesh.visual.ColorVisuals(out, vertex_colors=_to_u8(rgba))
    return out


def fill_unseen(colours: np.ndarray, seen: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Fill unseen vertices by breadth-first propagation over the mesh's edges.

    ``colours``: ``(V, 3)`` float; ``seen``: ``(V,)`` bool; ``faces``: ``(F, 3)`` int.
    Each round, every unseen vertex with coloured neighbours takes their mean, then counts
    as coloured. Pieces of the mesh without any seen vertex get :data:`UNSEEN_COLOUR`.
    Returns a new ``(V, 3)`` float64 array.
    """
    colours = np.array(colours, dtype=np.float64)
    known = np.asarray(seen, dtype=bool).copy()
    n = len(colours)
    if known.all() or n == 0:
        return colours
    faces = np.asarray(faces, dtype=np.int64)
    rows = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1)
    cols = faces[:, [1, 0, 2, 1, 0, 2]].reshape(-1)
    adjacency = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    adjacency.data[:] = 1.0  # repeated edges count once
    while not known.all():
        weight = known.astype(np.float64)
        counts = adjacency @ weight
        frontier = ~known & (counts > 0)
        if not frontier.any():
            break
        sums = adjacency @ (colours * weight[:, None])
        colours[frontier] = sums[frontier] / counts[frontier, None]
        known |= frontier
    colours[~known] = UNSEEN_COLOUR
    return colours


# --------------------------------------------------------------------------- internals


class ViewImages:
    """What colour projection needs from a bundle, mesh aside: cameras, view weights, the
    silhouette-eroded foreground masks and the colour tiles. Prepared once and shared by every
    mesh projected from the same bundle (an export's LODs, its colour and normal bakes)."""

    def __init__(
        self,
        bundle: Bundle,
        view_weights: tuple[float, ...] | list[float] | None = None,
        erosion_px: int | None = None,
    ) -> None:
        self.bundle = bundle
        self.cameras = BundleCameras.from_spec(bundle.spec)
        n_views = len(self.cameras)
        if view_weights is None:
            view_weights = (1.0,) * n_views
        if len(view_weights) != n_views:
            raise ValueError(f"view_weights needs {n_views} values, got {len(view_weights)}")
        self.view_weights = np.asarray(view_weights, dtype=np.float64)
        if np.any(self.view_weights < 0):
            raise ValueError(f"view_weights must be >= 0, got {list(view_weights)}")
        self.tile = bundle.tile
        self.erosion = default_erosion_px(self.tile) if erosion_px is None else int(erosion_px)
        masks = decoded_views(bundle)[1]
        if self.erosion > 0:
            masks = np.stack([ndimage.binary_erosion(m, iterations=self.erosion) for m in masks])
        else:
            masks = masks.copy()  # the decoded views are shared; occlusion edges come off below
        #: ``(N, T, T)`` bool, eroded at the outer silhouette (not yet at occlusion edges)
        self.masks = masks
        #: ``(N, T, T, 3)`` float64 sRGB
        self.colours = bundle.colours().astype(np.float64)
        self._world_normals: np.ndarray | None = None

    def world_normals(self) -> np.ndarray:
        """The bundle's normal maps turned into the bundle frame: ``(N, T, T, 3)`` float64
        (``n_cam = R n_world``; 0 on background)."""
        if self._world_normals is None:
            cam = decoded_views(self.bundle)[0].astype(np.float64)
            self._world_normals = np.einsum("nhwc,ncd->nhwd", cam, self.cameras.rotations)
        return self._world_normals


class _ViewSampler:
    """The bundle's views rasterised once with one mesh (for visibility), ready to colour
    arbitrary points of that mesh's surface."""

    def __init__(
        self,
        bundle: Bundle,
        vertices: np.ndarray,
        faces: np.ndarray,
        view_weights: tuple[float, ...] | list[float] | None,
        erosion_px: int | None,
        rasteriser: Rasteriser | None,
        images: ViewImages | None = None,
    ) -> None:
        from models.raster import get_rasteriser

        images = images or ViewImages(bundle, view_weights, erosion_px)
        self.images = images
        self.cameras = images.cameras
        n_views = len(self.cameras)
        self.view_weights = images.view_weights
        self.tile = images.tile
        erosion = images.erosion
        self.masks = images.masks.copy()
        self.colours = images.colours  # (N, T, T, 3) sRGB

        rasteriser = rasteriser or get_rasteriser()
        mvp = self.cameras.mvp
        homo = np.concatenate([vertices, np.ones((len(vertices), 1))], axis=1)
        clip = np.einsum("nij,vj->nvi", mvp, homo)
        raster = rasteriser.rasterise(
            torch.as_tensor(clip, dtype=torch.float32),
            torch.as_tensor(faces, dtype=torch.int64),
            (self.tile, self.tile),
        )
        ndc_depth = raster.depth.detach().cpu().numpy().astype(np.float64)
        covered = raster.tri_id.cpu().numpy() >= 0
        self.depth = np.where(covered, self._eye_depth(ndc_depth), np.inf)  # (N, T, T)
        # Occlusion edges inside the mask (a part in front of another) blend two surfaces'
        # colours just like the outer silhouette does: erode them away too.
        footprint = 2.0 * bundle.spec.distance / (self.cameras.projection[1, 1] * self.tile)
        jump = max(DEPTH_EDGE, DEPTH_EDGE_PX * footprint)
        for v in range(n_views if erosion > 0 else 0):
            # The edge pixels on both sides are the first pixel of the band.
            edges = _depth_edges(self.depth[v], jump)
            if erosion > 1:
                edges = ndimage.binary_dilation(edges, iterations=erosion - 1)
            self.masks[v] &= ~edges

    def _eye_depth(self, ndc_z: np.ndarray) -> np.ndarray:
        """NDC depth -> distance along the view axis (``-z_eye``), bundle-frame units."""
        a = self.cameras.projection[2, 2]
        b = self.cameras.projection[2, 3]
        return b / (ndc_z + a)

    def observe(self, points: np.ndarray, normals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-view weights ``(N, P)`` and sRGB colours ``(N, P, 3)`` of surface points.

        ``points`` ``(P, 3)`` and unit ``normals`` ``(P, 3)`` in the bundle frame. A weight is 0
        where the view does not see the point.
        """
        n_views, t = len(self.cameras), self.tile
        homo = np.concatenate([points, np.ones((len(points), 1))], axis=1)
        weights = np.zeros((n_views, len(points)))
        colours = np.zeros((n_views, len(points), 3))
        # Width of one pixel per unit of eye depth.
        pixel_angle = 2.0 / (self.cameras.projection[1, 1] * t)
        for v in range(n_views):
            clip = homo @ self.cameras.mvp[v].T
            w = clip[:, 3]
            px = (clip[:, 0] / w + 1.0) * 0.5 * t - 0.5
            py = (1.0 - clip[:, 1] / w) * 0.5 * t - 0.5
            to_eye = self.cameras.eyes[v][None] - points
            to_eye /= np.linalg.norm(to_eye, axis=1, keepdims=True)
            cos = np.abs(np.einsum("ij,ij->i", normals, to_eye))

            inside = (px >= 0) & (px <= t - 1) & (py >= 0) & (py <= t - 1)
            # Every pixel the bilinear colour lookup touches must be inside the eroded mask,
            # or a half-covered edge pixel (blended with white) leaks into the colour.
            in_mask = inside & _all_neighbours(self.masks[v], px, py)

            # Visible when not behind the depth buffer; the tolerance covers one pixel of
            # surface slope (the buffer is sampled at pixel centres, creases bend it) plus a
            # constant.
            ref = _sample_depth(self.depth[v], px, py)
            slope = np.minimum(
                np.sqrt(np.maximum(1.0 - cos**2, 0.0)) / np.maximum(cos, 1e-6), MAX_SLOPE
            )
            tol = DEPTH_TOLERANCE + w * pixel_angle * slope
            visible = in_mask & (w <= ref + tol)

            weights[v] = np.where(visible, self.view_weights[v] * cos**2, 0.0)
            colours[v] = _bilinear(self.colours[v], px, py)
        return weights, colours

    def blend(self, points: np.ndarray, normals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Weighted mean colour ``(P, 3)`` float64 sRGB and a ``(P,)`` bool "seen" flag."""
        weights, colours = self.observe(points, normals)
        total = weights.sum(0)
        seen = total > 0
        mean = (weights[..., None] * colours).sum(0) / np.maximum(total, 1e-12)[:, None]
        return np.where(seen[:, None], mean, 0.0), seen


def _depth_edges(depth: np.ndarray, jump: float) -> np.ndarray:
    """``(T, T)`` bool: covered pixels whose eye depth differs from a covered 4-neighbour's by
    more than ``jump``. The outer silhouette (a neighbour is background, ``inf``) is left to
    the mask erosion, so it is not eroded twice."""
    edges = np.zeros(depth.shape, dtype=bool)
    with np.errstate(invalid="ignore"):
        dy = np.abs(depth[1:] - depth[:-1])
        dx = np.abs(depth[:, 1:] - depth[:, :-1])
    # Anything minus inf is inf or nan: not an occlusion edge between two surfaces.
    dy = np.isfinite(dy) & (dy > jump)
    dx = np.isfinite(dx) & (dx > jump)
    edges[1:] |= dy
    edges[:-1] |= dy
    edges[:, 1:] |= dx
    edges[:, :-1] |= dx
    return edges


def _all_neighbours(mask: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """True where all 4 pixels around each fractional position are set in ``mask`` ``(T, T)``."""
    t = mask.shape[0]
    x0 = np.clip(np.floor(px), 0, t - 1).astype(np.int64)
    y0 = np.clip(np.floor(py), 0, t - 1).astype(np.int64)
    x1 = np.minimum(x0 + 1, t - 1)
    y1 = np.minimum(y0 + 1, t - 1)
    return mask[y0, x0] & mask[y0, x1] & mask[y1, x0] & mask[y1, x1]


def _sample_depth(depth: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Eye depth of the buffer ``(T, T)`` at fractional pixels: bilinear between covered
    neighbours, the nearest covered neighbour's at silhouettes, ``inf`` where none is covered."""
    t = depth.shape[0]
    x0 = np.clip(np.floor(px), 0, t - 1).astype(np.int64)
    y0 = np.clip(np.floor(py), 0, t - 1).astype(np.int64)
    x1 = np.minimum(x0 + 1, t - 1)
    y1 = np.minimum(y0 + 1, t - 1)
    fx = np.clip(px - x0, 0.0, 1.0)
    fy = np.clip(py - y0, 0.0, 1.0)
    d = np.stack([depth[y0, x0], depth[y0, x1], depth[y1, x0], depth[y1, x1]])  # (4, P)
    wts = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy])
    finite = np.isfinite(d)
    bilinear = np.where(finite, d, 0.0)
    interp = (wts * bilinear).sum(0) / np.maximum((wts * finite).sum(0), 1e-12)
    all_finite = finite.all(0)
    # At a silhouette, compare against the farthest covered neighbour (the point's own surface).
    far = np.where(finite, d, -np.inf).max(0)
    return np.where(all_finite, interp, np.where(finite.any(0), far, np.inf))


def _bilinear(image: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Sample ``image`` ``(T, T, C)`` at fractional pixel positions (clamped at the border)."""
    t = image.shape[0]
    px = np.clip(px, 0.0, t - 1.0)
    py = np.clip(py, 0.0, t - 1.0)
    x0 = np.floor(px).astype(np.int64)
    y0 = np.floor(py).astype(np.int64)
    x1 = np.minimum(x0 + 1, t - 1)
    y1 = np.minimum(y0 + 1, t - 1)
    fx = (px - x0)[:, None]
    fy = (py - y0)[:, None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def _to_u8(values: np.ndarray) -> np.ndarray:
    return np.round(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
