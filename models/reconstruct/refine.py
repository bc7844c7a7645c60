"""ISOMER-style refinement: fit a triangle mesh to a bundle's 4 normal maps and masks.

The mesh starts from a sphere (or a given coarse mesh) and is optimised with
:class:`models.reconstruct.optimise.VertexOptimiser`, which remeshes continuously toward a
reference edge
length. Each step renders the mesh from the bundle's 4 cameras (:mod:`models.raster`), compares

- camera-space normals with the decoded normal maps inside the target masks,
- anti-aliased silhouettes with the target masks,
- in the fine phase, log depth with the shape each normal map integrates to
  (:mod:`models.reconstruct.depth_target`: it pins walls no silhouette bounds),

and adds a penalty on vertices that leave the unit box ``[-1, 1]^3``. A coarse phase at a long
edge length and a low resolution finds the shape (smooth vertex normals); a fine phase at a
shorter edge length and the optimisation resolution adds detail (flat face normals, so a visible
face's normal loss does not bend the unseen faces beside a crease). Vertices that no camera
sees (the bundle's cameras sit 0.39 above the origin, so tops above that height and bottoms are
never seen) are relaxed toward their neighbours' mean after every step: unseen regions become
membranes spanning what the views pin down (flat lids and bottoms rather than domes).

An optional last phase ("explicit target", an approximation of ISOMER's final step) projects the
target normals onto the visible vertices once and pulls face normals toward them without
rendering, with the topology frozen.

Everything is in the bundle frame: +Y up, front facing +Z, object within ``[-0.9, 0.9]^3``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
import torch.nn.functional as F
import trimesh

from models.bundle.cameras import BundleCameras
from models.bundle.memo import BundleMemo, decoded_coverage, decoded_views
from models.bundle.spec import NORMALISED_EXTENT, Bundle
from models.geometry import remesh as rm
from models.geometry.decimate import decimate_to_edge
from models.geometry.frames import to_source_frame
from models.geometry.normals_torch import face_normals_t, vertex_normals_t
from models.reconstruct.depth_target import depth_loss, depth_targets
from models.reconstruct.optimise import OptimiserConfig, VertexOptimiser
from models.reconstruct.refine_kernels import (
    face_pixel_sums,
    hidden_from_clip,
    relax_hidden_into,
)

#: An init mesh must lie within this box (bundle frame) to be accepted without normalisation.
INIT_BOX = 1.0
#: A target pixel counts as foreground for the normal loss when this share of it is covered.
FULL_COVER = 0.999
#: Depth tolerance (NDC) when deciding that a vertex is visible in a view.
VISIBILITY_EPS = 2e-3
#: NDC depth tolerance of :func:`hidden_vertices` (about 0.03 bundle units at the cameras).
HIDDEN_DEPTH_EPS = 3e-4
#: Output components with fewer faces than this are remeshing debris and are dropped.
MIN_PART_FACES = 8
#: The spec centres an object's bounding box and scales its longest side to 1.8: no point of
#: it lies beyond this on any axis (bundle frame).
OBJECT_HALF_EXTENT = NORMALISED_EXTENT / 2.0
#: Scale of the silhouette loss relative to the normal loss before ``mask_weight``.
MASK_SCALE = 100.0

Progress = Callable[[int, int, dict], None]


@dataclass
class RefineParams:
    """Settings of :func:`refine_mesh`."""

    coarse_edge: float = 0.08
    """Reference edge length of the coarse phase (bundle-frame units; the object spans 1.8)."""
    fine_edge: float = 0.04
    """Reference edge length at the end of the fine phase."""
    fine_faces: int = 0
    """Faces the fine phase aims at, at least: where ``fine_edge`` would tile the surface (its
    area at the end of the coarse phase) with fewer, the fine edge length shrinks to reach
    about this many, down to a quarter of ``fine_edge``. A thin part needs edges shorter than
    its thickness to keep its sides apart, and a small thin object (a wrench, a knife) has few
    faces at a length that suits a mug. 0 keeps ``fine_edge``."""
    coarse_thickness: float = 0.0
    """The coarse phase's edge length is at most this multiple of a watertight init's mean
    thickness (twice its volume over its area: a plate's thickness, a rod's radius), down to
    half of ``coarse_edge``; the fine phase's ramp then starts from it. Edges longer than a
    thin part's thickness cannot hold its two sides apart: a wrench's flat handle (0.04
    thick) became a lens at the 0.08 edge, and the normal loss squeezed it to half its width.
    0 keeps ``coarse_edge``."""
    coarse_steps: int = 120
    """Optimisation steps of the coarse phase."""
    fine_steps: int = 120
    """Optimisation steps of the fine phase."""
    explicit_steps: int = 0
    """Steps of the explicit-target phase (0 turns it off). It has no silhouette term: it helps
    a good init mesh (tests: 0.64 -> 0.85 F@0.05 on a box) but costs silhouette accuracy
    after a sphere start, so it is off by default."""
    coarse_resolution: int = 128
    """Render resolution of the coarse phase (pixels per side; targets are downsampled)."""
    resolution: int = 256
    """Render resolution of the fine phase (e.g. 256 for 512-pixel tiles)."""
    lr: float = 0.3
    """Optimiser step in units of the reference edge length."""
    fine_lr: float = 0.2
    """Optimiser step of the fine and explicit phases."""
    smooth_lambda: float = 2.0
    """Laplacian smoothing of each update (larger: stiffer, smoother surfaces)."""
    normal_weight: float = 1.0
    """Weight of the normal loss (squared difference of unit normals inside the masks)."""
    mask_weight: float = 2.0
    """Weight of the silhouette loss (squared difference of anti-aliased masks), coarse phase."""
    fine_mask_weight: float = 0.5
    """Weight of the silhouette loss in the fine phase."""
    mask_coverage: bool = True
    """Fit the fine phase's silhouettes (and the guard's, :func:`view_error`) to each pixel's
    coverage read from the bundle's blended edge pixels (:mod:`models.bundle.coverage`) rather
    than to the spec's binary masks, which are a quarter of a 512-px pixel wider than the
    object (an apple's refined wall lay 0.0016 bundle units outside it, a padlock's 0.008)."""
    coarse_mask_coverage: bool = False
    """The same for the coarse phase. Off: the binary masks there keep concave and thin shapes
    better (a banana's inner curve, a drill's handle, toy airplane 072-b: 0.03-0.05 of F@0.05
    lost with coverage in both phases, none with it in the fine phase alone). The rasteriser's
    anti-aliased silhouette of a part one to three pixels wide is not its coverage (a rod 1.6
    pixels wide renders 10 % wider, one 3 pixels wide 3 % narrower, one under half a pixel not
    at all), and at the coarse phase's resolution more of an object is that thin."""
    depth_weight: float = 0.0
    """Weight of the depth term in the coarse phase: the rendered log depth against the shape
    each view's normal map integrates to (:mod:`models.reconstruct.depth_target`); 0 turns
    it off. Off: with 0.3 in both phases the 14 objects tried fared worse than with the fine
    phase's term alone."""
    fine_depth_weight: float = 1.0
    """Weight of the depth term in the fine phase; 0 turns it off. It pins the walls no
    silhouette bounds (a cup's diagonals; over the 78 YCB objects at 512-px tiles median
    F@0.05 0.935 -> 0.949, 30 up, 9 down)."""
    depth_scale: float = 0.01
    """Log-depth residual at which the depth term's bounded penalty reaches half its maximum
    (0.01: about 0.045 bundle units at the cameras' distance; 0.005 and 0.0025 measured
    worse on a toy airplane, a foam brick and a clamp)."""
    box_weight: float = 10.0
    """Weight of the penalty on vertices outside the unit box."""
    coarse_flat: bool = False
    """Compare flat-shaded (face) normals in the coarse phase instead of smooth vertex normals."""
    fine_flat: bool = True
    """Compare flat-shaded (face) normals in the fine phase (keeps unseen faces beside creases
    from bending toward the visible ones)."""
    hidden_relax: int = 3
    """Jacobi iterations per step that move vertices no view sees to the mean of their
    neighbours (a membrane over unseen regions: flat caps and bottoms); 0 turns it off."""
    laplacian_weight: float = 0.0
    """Weight of a membrane term (squared uniform Laplacian over squared edge length) on every
    vertex; off by default because it rounds creases and drifts what the views pin down
    (``hidden_relax`` flattens the unseen regions instead)."""
    remesh_interval: int = 2
    """Remesh after every this many steps (1: every step)."""
    settled_remesh_interval: int = 0
    """Remesh interval once the reference edge length has stopped changing (the whole coarse
    phase, the fine phase after its ramp), when the mesh only needs upkeep; 0 keeps
    ``remesh_interval``."""
    fine_ramp: float = 0.5
    """Share of the fine phase's steps over which the reference edge length ramps
    (geometrically) from the coarse phase's edge length down to ``fine_edge``; the plateau
    stop only starts after the ramp."""
    view_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    """Weight of each of the 4 views in every image loss."""
    sphere_radius: float = 0.85
    """Radius of the initial sphere (the ``sphere`` init and ``refine_mesh(..., None)``)."""
    plateau_steps: int = 0
    """A phase ends early once its loss has not improved by ``plateau_tolerance`` (relative)
    for this many steps; 0 runs every step."""
    plateau_tolerance: float = 0.01
    """Relative improvement of the best loss that counts as progress for ``plateau_steps``."""
    diverged_ratio: float = 2.0
    """A phase whose normal loss ends above this multiple of the normal loss at its
    lowest-loss step has diverged, and goes back to that step's mesh (the fine phase counts
    only the steps after its ramp); 0 turns it off. The silhouette term can pull a thin
    plate's two sides through each other (a spatula's blade: normal loss 0.19 at the best step,
    0.84 at the end of its phase), and the normal loss never recovers from the flipped faces.
    Over the 78 YCB objects the next-largest ratio was 1.7; smaller rises are the noise of
    remeshing, and going back over them changed F@0.05 by up to 0.04 either way."""
    seed: int = 0
    """Seed of torch's generator (the loop is deterministic; kept for reproducible variants)."""
    device: str = "cpu"
    """Torch device of the optimisation."""
    torch_threads: int | None = 1
    """Torch CPU threads while refining, restored afterwards (small-tensor work on a loaded
    CPU runs faster on one thread); ``None`` keeps torch's setting."""

    @classmethod
    def from_mapping(cls, data: dict | None, base: RefineParams | None = None) -> RefineParams:
        """``base`` (default: the defaults) with the fields named in ``data`` replaced.

        An unknown key raises :class:`RefineParamsError` naming the nearest valid field.
        """
        from difflib import get_close_matches

        known = [f.name for f in fields(cls)]
        for key in data or {}:
            if key not in known:
                near = get_close_matches(key, known, n=1)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                raise RefineParamsError(f"unknown refine param {key!r}{hint}")
        values = dict(data or {})
        if "view_weights" in values:
            values["view_weights"] = tuple(float(w) for w in values["view_weights"])
        return replace(base or cls(), **values)


class RefineParamsError(ValueError):
    """Bad refinement settings (permanent)."""

    retryable = False


def sphere_init(radius: float = 0.85, subdivisions: int = 3) -> trimesh.Trimesh:
    """An icosphere centred at the origin of the bundle frame (``(V, 3)`` float64 vertices)."""
    return trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)


class Plateau:
    """Tells when a loss stops improving: ``update(loss)`` is True once the best loss has not
    dropped by ``tolerance`` (relative) for ``patience`` calls; ``patience`` 0 never stops."""

    def __init__(self, patience: int, tolerance: float) -> None:
        self.patience = patience
        self.tolerance = tolerance
        self.best = float("inf")
        self.since = 0

    def update(self, loss: float) -> bool:
        if loss < self.best * (1.0 - self.tolerance):
            self.best = loss
            self.since = 0
        else:
            self.since += 1
        return self.patience > 0 and self.since >= self.patience


@dataclass
class _BestMesh:
    """The lowest-loss mesh of a phase so far: its total and normal losses, ``(V, 3)`` float32
    vertices and ``(F, 3)`` int64 faces."""

    loss: float
    normal: float
    vertices: torch.Tensor
    faces: torch.Tensor


# ----------------------------------------------------------------------------------- targets


@dataclass
class _Targets:
    """Targets at one resolution: normals ``(4, R, R, 3)`` camera space, masks ``(4, R, R)``
    (the bundle's coverage in [0, 1], :func:`models.bundle.memo.decoded_coverage`, or its
    binary masks),
    ``full`` ``(4, R, R)`` bool (pixels the normal loss trusts) and, for those pixels only,
    their flat indices into a ``(4, R, R)`` image ``full_index`` ``(N,)``, their views
    ``full_view`` ``(N,)``, world-frame normals ``full_world`` ``(N, 3)`` and their squared
    norms ``full_square`` ``(N,)``."""

    normals: torch.Tensor
    masks: torch.Tensor
    full: torch.Tensor
    full_index: torch.Tensor
    full_view: torch.Tensor
    full_world: torch.Tensor
    full_square: torch.Tensor


class _TargetCache:
    """The targets of the last bundle refined, per ``(resolution, device, coverage)``.

    One reconstruction needs its targets four times (coarse and fine phases, the guard's two
    :func:`view_error` calls); the decoded maps they are averaged from are shared with the
    other stages (:func:`models.bundle.memo.decoded_views`).
    """

    def __init__(self) -> None:
        self.memo = BundleMemo()

    def get(self, bundle: Bundle, resolution: int, device: torch.device,
            coverage: bool = True) -> _Targets:
        values = self.memo.values(bundle)
        key = (int(resolution), str(device), bool(coverage))
        if key not in values:
            values[key] = _downsample_targets(bundle, resolution, device, coverage)
        return values[key]


_TARGETS = _TargetCache()


def _downsample_targets(
    bundle: Bundle,
    resolution: int,
    device: torch.device,
    coverage: bool = True,
) -> _Targets:
    """Area-average the bundle's normals and masks to ``resolution`` pixels per side; the
    masks are the per-pixel coverage (:func:`models.bundle.memo.decoded_coverage`) with
    ``coverage``, else the spec's binary masks."""
    normals_np, masks_np = decoded_views(bundle)
    # Copies: the decoded views are shared and read-only, and torch tensors are writable.
    normals = torch.tensor(normals_np, device=device)  # (4, T, T, 3), 0 on background
    binary = torch.from_numpy(masks_np.astype(np.float32)).to(device)
    # The spec's binary masks are a quarter pixel wider than the object, and a mesh fitted to
    # them grows by as much.
    masks = torch.tensor(decoded_coverage(bundle), device=device) if coverage else binary
    # Silhouette pixels of a bundle blend the normal with the white background, which decodes
    # to a tilted normal: the normal loss only trusts pixels whose 3x3 neighbourhood is inside.
    inner = -F.max_pool2d(-binary[:, None], 3, stride=1, padding=1)[:, 0]
    tile = normals.shape[1]
    if resolution != tile:
        size = (resolution, resolution)
        normals = F.interpolate(normals.permute(0, 3, 1, 2), size=size, mode="area")
        normals = normals.permute(0, 2, 3, 1)
        masks = F.interpolate(masks[:, None], size=size, mode="area")[:, 0]
        inner = F.interpolate(inner[:, None], size=size, mode="area")[:, 0]
    normals = F.normalize(normals, dim=-1)
    full = inner >= FULL_COVER
    # The loss compares normals in the world frame (a rotation keeps distances), so the
    # targets are rotated once here instead of every rendered pixel at every step.
    rotations = torch.from_numpy(
        BundleCameras.from_spec(bundle.spec).rotations.astype(np.float32)).to(device)
    view, row, col = full.nonzero(as_tuple=True)
    world = (rotations[view] * normals[view, row, col][:, :, None]).sum(1)  # R^T n
    return _Targets(normals=normals, masks=masks, full=full,
                    full_index=full.reshape(-1).nonzero(as_tuple=True)[0], full_view=view,
                    full_world=world, full_square=world.square().sum(-1))


# --------------------------------------------------------------------------------- rendering


def _clip(vertices: torch.Tensor, mvp: torch.Tensor) -> torch.Tensor:
    """World ``(V, 3)`` -> clip ``(B, V, 4)`` for ``mvp`` ``(B, 4, 4)``."""
    homo = torch.cat([vertices, torch.ones_like(vertices[:, :1])], dim=1)
    return torch.einsum("bij,vj->bvi", mvp, homo)


def _render(rasteriser, vertices, faces, mvp, resolution, flat):
    """Rasterise the 4 views: ``(normals, masks, raster)``.

    ``normals`` are world-frame normals to be read at covered pixels: per face ``(F, 3)`` with
    ``flat`` (looked up through ``raster.tri_id``), else interpolated per pixel ``(B, R, R, 3)``;
    ``masks`` ``(B, R, R)`` are the anti-aliased silhouettes.
    """
    clip = _clip(vertices, mvp)
    raster = rasteriser.rasterise(clip, faces, (resolution, resolution))
    if flat:
        # Flat shading: each pixel takes its triangle's normal. Smooth vertex normals let the
        # normal loss of a visible face bend the unseen faces beside a crease (an object's
        # bottom bulges down); face normals keep every gradient on the faces that are seen.
        normals = face_normals_t(vertices, faces)
    else:
        normals = rasteriser.interpolate(vertex_normals_t(vertices, faces), raster)
    cover = raster.mask.to(vertices.dtype)[..., None]
    mask = rasteriser.antialias(cover, raster)[..., 0]
    return normals, mask, raster


def _normal_loss(normals, raster, targets):
    """Per-view mean squared difference ``(B,)`` of rendered and target unit normals over the
    pixels both cover (a world-frame difference equals the camera-frame one).

    Only the target's trusted pixels are gathered, so the forward and backward passes cost
    per covered pixel rather than per pixel of 4 full images.
    """
    views = raster.tri_id.shape[0]
    if normals.dim() == 2 and _compiled_sums(normals, raster.tri_id, targets):
        # Flat shading on the CPU: one compiled pass over the trusted pixels instead of
        # gathering them with torch (same sums in the same order, so the same values).
        nf = normals.shape[0]
        count = np.zeros(views * nf, np.float32)
        summed = np.zeros((views * nf, 3), np.float32)
        squares = np.zeros(views, np.float32)
        face_pixel_sums(raster.tri_id.reshape(-1).detach().numpy(), targets.full_index.numpy(),
                        targets.full_view.numpy(), targets.full_world.numpy(),
                        targets.full_square.numpy(), nf, count, summed, squares)
        return _face_loss_from_sums(normals, torch.from_numpy(count).view(views, nf),
                                    torch.from_numpy(summed).view(views, nf, 3),
                                    torch.from_numpy(squares))
    # Flat indices: one gather instead of indexing by (view, row, column) tensors.
    tri = raster.tri_id.reshape(-1)[targets.full_index]
    keep = (tri >= 0).nonzero(as_tuple=True)[0]
    view = targets.full_view[keep]
    if normals.dim() == 2:  # per face, already unit length
        return _face_normal_loss(normals, tri[keep], view, targets.full_world[keep], views)
    pixels = normals.reshape(-1, 3)[targets.full_index[keep]]
    n_world = F.normalize(pixels, dim=-1, eps=1e-12)
    diff = (n_world - targets.full_world[keep]).square().sum(-1)
    per_view = torch.zeros(raster.tri_id.shape[0], dtype=diff.dtype, device=diff.device)
    count = torch.bincount(view, minlength=per_view.shape[0]).to(diff.dtype)
    return per_view.index_add(0, view, diff) / count.clamp_min(1.0)


def _face_normal_loss(face_normals, face, view, target, views):
    """:func:`_normal_loss` for flat shading: per-face normals ``(F, 3)``, and per covered
    trusted pixel its face ``(N,)``, view ``(N,)`` and world-frame target normal ``(N, 3)``.

    All pixels of a face in a view share its normal ``n``, so their squared errors sum to
    ``c |n - m|^2 + sum |t - m|^2`` with ``c`` the pixel count and ``m`` the mean target: the
    per-pixel work is a gradient-free scatter, and autograd only sees ``(views, F, 3)`` values.
    """
    nf = face_normals.shape[0]
    with torch.no_grad():
        slot = view * nf + face
        count = torch.bincount(slot, minlength=views * nf).to(target.dtype).view(views, nf)
        summed = torch.zeros(views * nf, 3, dtype=target.dtype, device=target.device)
        summed = summed.index_add_(0, slot, target).view(views, nf, 3)
        squares = torch.zeros(views, dtype=target.dtype, device=target.device)
        squares = squares.index_add_(0, view, target.square().sum(-1))
    return _face_loss_from_sums(face_normals, count, summed, squares)


def _compiled_sums(face_normals, tri_id, targets) -> bool:
    """Whether :func:`face_pixel_sums` can take the flat loss's pixel sums (CPU tensors of the
    dtypes it is compiled for)."""
    return (face_normals.device.type == "cpu" and tri_id.dtype == torch.int64
            and targets.full_world.dtype == targets.full_square.dtype == torch.float32
            and targets.full_index.dtype == targets.full_view.dtype == torch.int64
            and tri_id.is_contiguous())


def _face_loss_from_sums(face_normals, count, summed, squares):
    """:func:`_face_normal_loss` from its pixel sums: per (view, face) pixel counts ``count``
    ``(B, F)`` and summed target normals ``summed`` ``(B, F, 3)``, per view summed squared
    target norms ``squares`` ``(B,)``; returns the per-view loss ``(B,)``."""
    with torch.no_grad():
        mean = summed / count.clamp_min(1.0)[..., None]
        # sum |t - m|^2 per view = sum |t|^2 - sum c |m|^2 (the part no vertex can change)
        spread = squares - (count * mean.square().sum(-1)).sum(1)
        pixels = count.sum(1)
    error = (count * (face_normals[None] - mean).square().sum(-1)).sum(1)
    return (error + spread) / pixels.clamp_min(1.0)


def uniform_laplacian(vertices: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """``(V, 3)``: each vertex minus the mean of its neighbours (``edges`` ``(E, 2)``)."""
    acc = torch.zeros_like(vertices)
    acc = acc.index_add(0, edges[:, 0], vertices[edges[:, 1]])
    acc = acc.index_add(0, edges[:, 1], vertices[edges[:, 0]])
    deg = torch.bincount(edges.reshape(-1), minlength=vertices.shape[0]).clamp_min(1)
    return vertices - acc / deg[:, None].to(vertices.dtype)


def _losses(params, mask_weight, rendered, targets, view_w, vertices, edges, edge_length):
    normals, mask, raster = rendered
    per_view_n = _normal_loss(normals, raster, targets)
    per_view_m = (mask - targets.masks).square().mean((1, 2))
    normal = (per_view_n * view_w).sum() / view_w.sum()
    sil = (per_view_m * view_w).sum() / view_w.sum()
    box = F.relu(vertices.abs() - INIT_BOX).square().sum(1).mean()
    # The silhouette error lives on a thin band of pixels; scale it to the normal term's size.
    total = (
        params.normal_weight * normal
        + mask_weight * MASK_SCALE * sil
        + params.box_weight * box
    )
    parts = {"normal": float(normal.detach()), "mask": float(sil.detach()),
             "box": float(box.detach())}
    if params.laplacian_weight:
        # Off by default: its forward and backward passes cost a tenth of a step.
        lap = uniform_laplacian(vertices, edges).square().sum(1).mean() / edge_length**2
        total = total + params.laplacian_weight * lap
        parts["laplacian"] = float(lap.detach())
    return total, parts


@torch.no_grad()
def hidden_vertices(
    vertices: torch.Tensor, mvp: torch.Tensor, depth: torch.Tensor, tol: float = HIDDEN_DEPTH_EPS
) -> torch.Tensor:
    """``(V,)`` bool: vertices that no view sees, judged against rendered NDC ``depth``
    ``(B, R, R)`` (a vertex is seen when it is not behind the depth at its pixel)."""
    res = depth.shape[-1]
    clip = _clip(vertices, mvp)
    if clip.device.type == "cpu" and clip.dtype == depth.dtype == torch.float32:
        # One compiled pass instead of a dozen torch operations per step; same float32
        # operations, so the same vertices.
        hidden = np.empty(vertices.shape[0], np.bool_)
        hidden_from_clip(np.ascontiguousarray(clip.numpy()),
                         np.ascontiguousarray(depth.detach().numpy()),
                         np.float32(tol), hidden)
        return torch.from_numpy(hidden)
    ndc = clip[..., :3] / clip[..., 3:4]
    px = ((ndc[..., 0] + 1) * res / 2 - 0.5).round().long().clamp(0, res - 1)
    py = ((1 - ndc[..., 1]) * res / 2 - 0.5).round().long().clamp(0, res - 1)
    b = torch.arange(depth.shape[0], device=depth.device)[:, None]
    seen = ndc[..., 2] <= depth[b, py, px] + tol
    return ~seen.any(dim=0)


@torch.no_grad()
def relax_hidden(
    vertices: torch.Tensor, edges: torch.Tensor, hidden: torch.Tensor, iterations: int
) -> torch.Tensor:
    """Move ``hidden`` vertices to the mean of their neighbours (Jacobi), others fixed.

    ``vertices``: ``(V, 3)``; ``edges``: ``(E, 2)`` int64; ``hidden``: ``(V,)`` bool. Returns a
    new ``(V, 3)`` tensor.
    """
    if (vertices.device.type == "cpu" and vertices.dtype == torch.float32
            and edges.shape[0] and iterations > 0):
        # Compiled: the torch loop costs about 2 ms a step on every vertex; same float32
        # operations in the same order, so the same values to the bit.
        out = np.empty(tuple(vertices.shape), np.float32)
        relax_hidden_into(np.ascontiguousarray(vertices.detach().numpy()),
                          np.ascontiguousarray(edges.numpy(), dtype=np.int64),
                          np.ascontiguousarray(hidden.numpy()), int(iterations), out)
        return torch.from_numpy(out)
    v = vertices
    for _ in range(iterations):
        mean = v - uniform_laplacian(v, edges)
        v = torch.where(hidden[:, None], mean, v)
    return v


@torch.no_grad()
def view_error(
    bundle: Bundle,
    mesh: trimesh.Trimesh,
    params: RefineParams | None = None,
    *,
    rasteriser=None,
) -> dict[str, float]:
    """How well ``mesh`` (bundle frame) matches the bundle's views, on refinement's own terms.

    Renders at ``params.resolution`` with the fine phase's shading and returns
    ``{"normal", "mask", "total"}``: the normal and silhouette losses of the fine phase and
    their weighted sum (lower is better). Used to keep the better of an init and its refinement
    without any reference mesh. Runs on ``params.torch_threads`` torch threads, as refinement
    does: on two loaded cores two threads cost several times the CPU seconds of one (mug, 12k
    faces: 0.17 s against 0.02 s). The losses do not depend on it: torch splits a per-view
    reduction across threads by view, never within one.
    """
    params = params or RefineParams()
    with _torch_threads(params.torch_threads):
        return _view_error(bundle, mesh, params, rasteriser)


def _view_error(bundle: Bundle, mesh: trimesh.Trimesh, params: RefineParams,
                rasteriser) -> dict[str, float]:
    if rasteriser is None:
        from models.raster import get_rasteriser

        rasteriser = get_rasteriser()
    device = torch.device(params.device)
    cams = BundleCameras.from_spec(bundle.spec)
    mvp = torch.from_numpy(cams.mvp.astype(np.float32)).to(device)
    view_w = torch.tensor(params.view_weights, dtype=torch.float32, device=device)
    vertices = torch.from_numpy(np.asarray(mesh.vertices, dtype=np.float32)).to(device)
    faces = torch.from_numpy(np.asarray(mesh.faces, dtype=np.int64)).to(device)
    # Only the membrane term reads the edges.
    edges = (torch.from_numpy(rm.edges_unique(faces.cpu().numpy(), len(vertices))[0]).to(device)
             if params.laplacian_weight else None)
    targets = _TARGETS.get(bundle, params.resolution, device, params.mask_coverage)
    rendered = _render(rasteriser, vertices, faces, mvp, params.resolution, params.fine_flat)
    total, parts = _losses(params, params.fine_mask_weight, rendered, targets, view_w, vertices,
                           edges, params.fine_edge)
    return {"normal": parts["normal"], "mask": parts["mask"], "total": float(total)}


# ------------------------------------------------------------------------------ explicit target


@torch.no_grad()
def _project_targets(rasteriser, vertices, faces, mvp, rotations, targets, view_w, resolution):
    """Per-vertex world-frame target normals ``(V, 3)`` and a ``(V,)`` bool of those found.

    A vertex takes the target normal under its projection in every view where it is visible
    (its depth matches the rendered depth) and inside the target mask, weighted by the view
    weight times the squared cosine between the target normal and the view axis.
    """
    clip = _clip(vertices, mvp)
    raster = rasteriser.rasterise(clip, faces, (resolution, resolution))
    ndc = clip[..., :3] / clip[..., 3:4]
    px = ((ndc[..., 0] + 1) * resolution / 2 - 0.5).round().long().clamp(0, resolution - 1)
    py = ((1 - ndc[..., 1]) * resolution / 2 - 0.5).round().long().clamp(0, resolution - 1)
    acc = torch.zeros_like(vertices)
    weight = torch.zeros(vertices.shape[0], device=vertices.device)
    for b in range(clip.shape[0]):
        depth = raster.depth[b, py[b], px[b]]
        visible = (ndc[b, :, 2] <= depth + VISIBILITY_EPS) & targets.full[b, py[b], px[b]]
        n_cam = targets.normals[b, py[b], px[b]]
        w = view_w[b] * n_cam[:, 2].clamp_min(0).square() * visible
        acc += w[:, None] * (n_cam @ rotations[b])  # camera -> world: R^T n
        weight += w
    found = weight > 1e-6
    return F.normalize(acc, dim=1, eps=1e-12), found


# ------------------------------------------------------------------------------------- driver


def _check_init(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if len(faces) == 0:
        raise ValueError("init_mesh has no faces")
    extent = np.abs(vertices).max()
    if not np.isfinite(extent) or extent > INIT_BOX + 0.05:
        raise ValueError(
            f"init_mesh must be in the bundle frame (within [-1, 1]^3), but reaches {extent:.3f}; "
            "normalise it as the bundle spec says before refining"
        )
    merged = trimesh.Trimesh(vertices, faces, process=True)
    merged.update_faces(merged.nondegenerate_faces())
    merged.remove_unreferenced_vertices()
    return np.asarray(merged.vertices), np.asarray(merged.faces, dtype=np.int64)


def _clean_output(vertices: np.ndarray, faces: np.ndarray) -> trimesh.Trimesh:
    vertices, faces, _ = rm.compact(vertices, faces)
    mesh = trimesh.Trimesh(vertices.astype(np.float64), faces, process=True)
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.update_faces(mesh.unique_faces())
    mesh.remove_unreferenced_vertices()
    # Remeshing a dense init can leave a stray fin (a lone face hinged on a closed surface's
    # edge); no real part is that small at the remeshing's edge lengths.
    parts = mesh.split(only_watertight=False)
    if len(parts) > 1 and any(len(p.faces) < MIN_PART_FACES for p in parts):
        mesh = trimesh.util.concatenate([p for p in parts if len(p.faces) >= MIN_PART_FACES])
    mesh.fix_normals()
    return mesh


def refine_mesh(
    bundle: Bundle,
    init_mesh: trimesh.Trimesh | None,
    params: RefineParams | None = None,
    *,
    rasteriser=None,
    progress: Progress | None = None,
    timings: dict[str, float] | None = None,
) -> trimesh.Trimesh:
    """Fit a mesh to ``bundle``'s normal maps and masks; returns a clean mesh in the bundle frame.

    ``init_mesh``: a starting mesh already in the bundle frame (within ``[-1, 1]^3``), or
    ``None`` for a sphere. ``rasteriser``: a :class:`models.raster.base.Rasteriser` (the
    automatic choice of :func:`models.raster.get_rasteriser` when ``None``). ``progress`` is
    called after every step with ``(step, total_steps, losses)`` where ``losses`` maps names to
    floats; ``total_steps`` is the planned count, reached unless ``plateau_steps`` ends a phase
    early. With no steps at all, a copy of ``init_mesh`` comes back
    unchanged. ``timings``, when given, receives the seconds of each part: ``setup`` (the
    init's decimation and first remeshing), ``coarse`` and ``fine`` (their steps, remeshing
    included), ``remesh`` (the remeshing within the steps), ``explicit``, ``clean``. Map the
    result to the source frame with :func:`models.geometry.frames.to_source_frame`.
    """
    params = params or RefineParams()
    steps = params.coarse_steps + params.fine_steps + params.explicit_steps
    if init_mesh is not None and steps == 0:
        # Nothing to fit: the initial mesh is the result, untouched (a retexture keeps its
        # input geometry; remeshing it without fitting would only lose detail).
        return init_mesh.copy()
    with _torch_threads(params.torch_threads):
        return _refine(bundle, init_mesh, params, rasteriser, progress,
                       timings if timings is not None else {})


@contextmanager
def _torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` torch CPU threads (``None``: unchanged), then restore."""
    threads = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def coarse_edge_for(vertices: np.ndarray, faces: np.ndarray, params: RefineParams) -> float:
    """The coarse phase's edge length for the init mesh ``(V, 3)``, ``(F, 3)`` (bundle frame):
    ``params.coarse_edge``, or ``params.coarse_thickness`` times the init's mean thickness
    when that is shorter, but no shorter than half of ``params.coarse_edge``. An init that is
    not watertight has no volume to measure and keeps ``params.coarse_edge``."""
    if params.coarse_thickness <= 0 or len(faces) == 0:
        return params.coarse_edge
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    if not mesh.is_watertight or mesh.area <= 0:
        return params.coarse_edge
    thickness = 2.0 * abs(float(mesh.volume)) / float(mesh.area)
    edge = params.coarse_thickness * thickness
    return max(min(params.coarse_edge, edge), params.coarse_edge / 2)


def fine_edge_for(vertices: torch.Tensor, faces: torch.Tensor, params: RefineParams) -> float:
    """The fine phase's edge length for the mesh ``(V, 3)``, ``(F, 3)`` (bundle frame): the
    length at which equilateral triangles would tile its area with ``params.fine_faces`` faces
    when that is shorter than ``params.fine_edge``, but no shorter than a quarter of it."""
    if params.fine_faces <= 0 or faces.shape[0] == 0:
        return params.fine_edge
    corners = vertices[faces]
    area = float(torch.linalg.cross(corners[:, 1] - corners[:, 0],
                                    corners[:, 2] - corners[:, 0]).norm(dim=1).sum()) / 2
    # An equilateral triangle of side L has area sqrt(3) / 4 * L^2.
    budget = math.sqrt(4.0 * area / (math.sqrt(3.0) * params.fine_faces))
    return max(min(params.fine_edge, budget), params.fine_edge / 4)


def _refine(
    bundle: Bundle,
    init_mesh: trimesh.Trimesh | None,
    params: RefineParams,
    rasteriser,
    progress: Progress | None,
    timings: dict[str, float],
) -> trimesh.Trimesh:
    # 1. Check inputs and set up.
    if len(params.view_weights) != len(bundle.spec.azimuths):
        raise ValueError(
            f"view_weights needs {len(bundle.spec.azimuths)} entries, got {params.view_weights}"
        )
    if params.fine_edge <= 0 or params.coarse_edge <= 0:
        raise ValueError("edge lengths must be positive")
    if params.fine_faces < 0:
        raise ValueError(f"fine_faces must be 0 or more, got {params.fine_faces}")
    if rasteriser is None:
        from models.raster import get_rasteriser

        rasteriser = get_rasteriser()
    torch.manual_seed(params.seed)
    device = torch.device(params.device)
    cams = BundleCameras.from_spec(bundle.spec)
    mvp = torch.from_numpy(cams.mvp.astype(np.float32)).to(device)
    rotations = torch.from_numpy(cams.rotations.astype(np.float32)).to(device)
    view_w = torch.tensor(params.view_weights, dtype=torch.float32, device=device)

    # 2. Initial mesh, remeshed to the coarse edge length.
    mark = time.perf_counter()
    if init_mesh is None:
        sphere = sphere_init(params.sphere_radius, 3)
        v0, f0 = np.asarray(sphere.vertices), np.asarray(sphere.faces, dtype=np.int64)
        coarse_edge = coarse_edge_for(v0, f0, params)
    else:
        v0, f0 = _check_init(init_mesh)
        coarse_edge = coarse_edge_for(v0, f0, params)
        # A dense init (a marching-cubes hull) reaches the coarse edge length in one decimation;
        # remeshing alone would spend the first steps collapsing edges.
        v0, f0 = decimate_to_edge(v0, f0, coarse_edge)
    v0, f0 = rm.remesh_to(v0, f0, coarse_edge, iterations=5)

    # 3. Phases: coarse (low resolution, long edges), fine (edge length ramps down).
    total = params.coarse_steps + params.fine_steps + params.explicit_steps
    config = OptimiserConfig(lr=params.lr, smooth_lambda=params.smooth_lambda,
                             remesh_interval=params.remesh_interval)
    opt = VertexOptimiser(v0, f0, coarse_edge, config, device=device)
    phases = [
        (params.coarse_steps, params.coarse_resolution, coarse_edge, coarse_edge,
         params.lr, params.mask_weight, params.coarse_flat, params.depth_weight,
         params.coarse_mask_coverage),
        (params.fine_steps, params.resolution, coarse_edge, params.fine_edge,
         params.fine_lr, params.fine_mask_weight, params.fine_flat, params.fine_depth_weight,
         params.mask_coverage),
    ]
    step = 0
    start = time.perf_counter()
    timings["setup"] = start - mark
    for name, phase in zip(("coarse", "fine"), phases, strict=True):
        steps, resolution, edge_from, edge_to, lr, mask_weight, flat, depth_w, coverage = phase
        mark = time.perf_counter()
        if steps <= 0:
            continue
        if name == "fine":
            edge_to = fine_edge_for(opt.vertices.detach(), opt.faces, params)
        targets = _TARGETS.get(bundle, resolution, device, coverage)
        if depth_w > 0:
            depth_target = depth_targets(bundle, resolution, device)
        opt.config.lr = lr
        plateau = Plateau(params.plateau_steps, params.plateau_tolerance)
        best: _BestMesh | None = None
        ramp_done = False
        for i in range(steps):
            # Geometric ramp over the first part of the phase, then hold.
            t = min(1.0, i / max(1.0, params.fine_ramp * steps))
            opt.set_edge_length(edge_from * (edge_to / edge_from) ** t)
            settled = t >= 1.0 or edge_from == edge_to
            opt.config.remesh_interval = (params.settled_remesh_interval
                                          if settled and params.settled_remesh_interval > 0
                                          else params.remesh_interval)
            rendered = _render(rasteriser, opt.vertices, opt.faces, mvp, resolution, flat)
            loss, parts = _losses(params, mask_weight, rendered, targets, view_w, opt.vertices,
                                  opt.edges, opt.edge_length)
            if depth_w > 0:
                raster = rendered[2]
                depth = depth_loss(raster.clip, opt.faces, raster.tri_id, raster.bary,
                                   depth_target, params.depth_scale)
                loss = loss + depth_w * depth
                parts["depth"] = float(depth.detach())
            # The loss only means "converged" once the edge length has stopped ramping down.
            ramp_done = ramp_done or settled
            value = float(loss.detach())
            if params.diverged_ratio > 0 and ramp_done and (best is None or value < best.loss):
                # No copy: the optimiser replaces its vertex tensor at each step, never edits it.
                best = _BestMesh(value, parts["normal"], opt.vertices.detach(), opt.faces)
            loss.backward()
            opt.step()
            # A surface seen only at grazing angles (an open top, a lid) tilts toward the
            # normals beyond it and rises out of the box the spec puts the object in.
            outside = opt.vertices.detach().abs() > OBJECT_HALF_EXTENT
            if bool(outside.any()):
                opt.set_vertices(opt.vertices.detach().clamp(-OBJECT_HALF_EXTENT,
                                                             OBJECT_HALF_EXTENT))
            if params.hidden_relax > 0:
                # Judged against this step's depth maps; vertices moved by less than a pixel.
                hidden = hidden_vertices(opt.vertices.detach(), mvp, rendered[2].depth.detach())
                if bool(hidden.any()):
                    opt.set_vertices(relax_hidden(opt.vertices.detach(), opt.edges, hidden,
                                                  params.hidden_relax))
            step += 1
            if progress is not None:
                parts.update(loss=value, faces=int(opt.faces.shape[0]),
                             seconds=time.perf_counter() - start)
                progress(step, total, parts)
            if ramp_done and plateau.update(value):
                break
        if best is not None and parts["normal"] > params.diverged_ratio * best.normal:
            opt.restart(best.vertices, best.faces)
        timings[name] = time.perf_counter() - mark
    timings["remesh"] = opt.remesh_seconds

    # 4. Optional explicit target: project target normals to the vertices once, then pull face
    # normals toward them with the topology frozen (no rendering in the loop).
    if params.explicit_steps > 0:
        mark = time.perf_counter()
        targets = _TARGETS.get(bundle, params.resolution, device, params.mask_coverage)
        v = opt.vertices.detach()
        t_v, found = _project_targets(rasteriser, v, opt.faces, mvp, rotations, targets, view_w,
                                      params.resolution)
        faces = opt.faces
        face_found = found[faces].all(dim=1)
        t_f = F.normalize(t_v[faces].sum(1), dim=1, eps=1e-12)
        exp_cfg = OptimiserConfig(lr=params.fine_lr, smooth_lambda=params.smooth_lambda,
                                  remesh_interval=0)
        exp = VertexOptimiser(v, faces, opt.edge_length, exp_cfg, device=device)
        for _ in range(params.explicit_steps):
            n_f = face_normals_t(exp.vertices, faces)
            err = (n_f - t_f).square().sum(1)
            loss = (err * face_found).sum() / face_found.sum().clamp_min(1)
            box = F.relu(exp.vertices.abs() - INIT_BOX).square().sum(1).mean()
            (loss + params.box_weight * box).backward()
            exp.step()
            step += 1
            if progress is not None:
                value = float(loss.detach())
                progress(step, total, {"explicit": value, "loss": value,
                                       "faces": int(faces.shape[0]),
                                       "seconds": time.perf_counter() - start})
        opt = exp
        timings["explicit"] = time.perf_counter() - mark

    # 5. Clean output in the bundle frame.
    mark = time.perf_counter()
    vertices, faces_np = opt.mesh()
    cleaned = _clean_output(vertices, faces_np)
    timings["clean"] = time.perf_counter() - mark
    return cleaned


__all__ = [
    "Plateau",
    "RefineParams",
    "RefineParamsError",
    "coarse_edge_for",
    "fine_edge_for",
    "refine_mesh",
    "sphere_init",
    "to_source_frame",
    "view_error",
]
