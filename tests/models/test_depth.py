"""Depth from normal maps: integration, anchoring on the hull, and carving what a view sees past."""

from __future__ import annotations

import numpy as np
import trimesh

from models.bundle.spec import Bundle, encode_normals
from models.geometry.mesh import normalise_mesh
from models.reconstruct.depth import (
    FRONT_STEP,
    DepthCarveParams,
    anchor_depth,
    integrate_log_depth,
    trusted_pixels,
)
from models.reconstruct.hull import HULL_BOX, carve_occupancy
from models.render.views import render_bundle

DISTANCE = 4.5
FOCAL_PX = 200.0


def sphere_view(radius: float, size: int = 96) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normals ``(S, S, 3)``, mask and true depth ``(S, S)`` of a sphere at the origin seen by a
    pinhole camera ``DISTANCE`` away on +z (principal point at the image centre)."""
    rows, cols = np.mgrid[0:size, 0:size]
    u = cols - (size - 1) / 2.0
    v = (size - 1) / 2.0 - rows
    ray = np.stack([u / FOCAL_PX, v / FOCAL_PX, -np.ones_like(u, dtype=float)], axis=-1)
    ray /= np.linalg.norm(ray, axis=-1, keepdims=True)
    eye = np.array([0.0, 0.0, DISTANCE])
    b = ray @ eye
    disc = b * b - (eye @ eye - radius * radius)
    mask = disc > 0
    t = -b - np.sqrt(np.maximum(disc, 0.0))
    point = eye + t[..., None] * ray
    normals = np.where(mask[..., None], point / radius, 0.0)
    depth = np.where(mask, DISTANCE - point[..., 2], np.nan)
    return normals, mask, depth


def grooved_pillar() -> trimesh.Trimesh:
    """An upright cylinder (radius 0.5, height 1.2) with a V groove down its front (+z): 0.4 wide
    at the surface, its tip at z = 0.1; no silhouette shows it."""
    angles = np.linspace(0.0, 2.0 * np.pi, 96, endpoint=False)
    circle = np.stack([0.5 * np.sin(angles), 0.5 * np.cos(angles)], axis=1)  # (x, z), from +z
    # From the groove's right lip round the back to its left lip, then to the tip.
    kept = circle[(np.abs(circle[:, 0]) > 0.2) | (circle[:, 1] < 0)]
    outline = np.vstack([kept, [[0.0, 0.1]]])
    tip = len(outline) - 1
    # A fan from the groove's tip, which sees every other corner.
    fan = np.array([[tip, i, i + 1] for i in range(tip - 1)])
    prism = trimesh.creation.extrude_triangulation(outline, fan, height=1.2)
    vertices = prism.vertices[:, [0, 2, 1]] - np.array([0.0, 0.6, 0.0])  # (x, z) out along y
    pillar = trimesh.Trimesh(vertices, prism.faces, process=True)
    if pillar.volume < 0:
        pillar.invert()
    return pillar


def test_integrated_sphere_depth_matches_the_true_depth_up_to_a_constant():
    normals, mask, depth = sphere_view(0.8)
    log_depth, pieces = integrate_log_depth(normals, mask, FOCAL_PX)
    inner = mask & (normals[..., 2] > 0.5)
    gap = np.log(depth[inner]) - log_depth[inner]
    assert pieces.max() == 1
    assert np.ptp(gap) < 0.004  # about 0.015 bundle units at this distance


def test_a_step_the_hull_shows_cuts_the_integration_where_the_normals_hide_it():
    # Two flat halves facing the camera, their normals alike; the masks' hull puts the right
    # half 0.2 further back (a nut over its narrower shaft).
    size = 48
    normals = np.zeros((size, size, 3))
    normals[..., 2] = 1.0
    mask = np.zeros((size, size), dtype=bool)
    mask[8:40, 8:40] = True
    front = np.where(mask, DISTANCE, np.nan)
    front[:, 24:] += 0.2
    assert integrate_log_depth(normals, mask, FOCAL_PX)[1].max() == 1
    _, pieces = integrate_log_depth(normals, mask, FOCAL_PX, front)
    assert pieces.max() == 2
    left = pieces[8, 8]
    assert (pieces[8:40, 8:24] == left).all() and (pieces[8:40, 24:40] != left).all()


def test_a_steep_front_the_normals_explain_does_not_cut_the_integration():
    # A plane turned 78 degrees from the camera: its depth falls about 0.1 per pixel, more than
    # FRONT_STEP, as its normals say. The masks' hull's front steps alike, and nothing is cut.
    size, angle = 32, np.radians(78.0)
    normal = np.array([np.sin(angle), 0.0, np.cos(angle)])
    rows, cols = np.mgrid[0:size, 0:size]
    ray = np.stack([(cols - (size - 1) / 2) / FOCAL_PX, ((size - 1) / 2 - rows) / FOCAL_PX,
                    -np.ones((size, size))], axis=-1)
    front = (normal @ np.array([0.0, 0.0, -DISTANCE])) / (ray @ normal)
    assert np.nanmax(np.abs(np.diff(front, axis=1))) > FRONT_STEP
    normals = np.broadcast_to(normal, (size, size, 3)).copy()
    mask = np.ones((size, size), dtype=bool)
    _, pieces = integrate_log_depth(normals, mask, FOCAL_PX, front)
    assert pieces.max() == 1


def anchored_sphere(stand_off) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The 0.8 sphere's integrated depth anchored on a hull front ``depth - stand_off(rows,
    cols)``; returns ``(estimate, true depth, normals, trusted pixels)``."""
    normals, mask, depth = sphere_view(0.8)
    log_depth, pieces = integrate_log_depth(normals, mask, FOCAL_PX)
    rows, cols = np.mgrid[0:96, 0:96]
    trusted = trusted_pixels(normals, mask, 2)
    estimate = anchor_depth(log_depth, pieces, depth - stand_off(rows, cols), trusted,
                            quantile=0.99, min_pixels=50)
    return estimate, depth, normals, trusted


def test_anchoring_on_a_hull_that_touches_the_sphere_recovers_its_depth():
    # A hull that touches the sphere's front over the middle and stands off it elsewhere.
    estimate, depth, normals, _ = anchored_sphere(
        lambda rows, cols: np.where((rows - 47.5) ** 2 + (cols - 47.5) ** 2 < 30.0**2, 0.0, 0.2))
    inner = np.isfinite(depth) & (normals[..., 2] > 0.5)
    assert np.nanmax(np.abs(estimate[inner] - depth[inner])) < 0.02


def test_a_surface_touching_its_hull_along_a_line_is_anchored_on_that_line():
    # The hull meets the sphere on one column only and stands further off the further a pixel
    # is from it (a box's near edge in front of a face turned away from the camera).
    estimate, depth, normals, trusted = anchored_sphere(
        lambda rows, cols: 0.004 * np.abs(cols - 47.5))
    inner = trusted & (normals[..., 2] > 0.5)
    assert np.nanmax(np.abs(estimate[inner] - depth[inner])) < 0.03


def test_a_piece_with_too_few_trusted_pixels_is_left_unestimated():
    normals, mask, depth = sphere_view(0.8)
    log_depth, pieces = integrate_log_depth(normals, mask, FOCAL_PX)
    trusted = np.zeros_like(mask)
    trusted[40:45, 40:45] = True
    estimate = anchor_depth(log_depth, pieces, depth, trusted, quantile=0.99, min_pixels=50)
    assert np.isnan(estimate).all()


def hull_in_source_frame(
    mesh: trimesh.Trimesh, depth: DepthCarveParams | None
) -> tuple[np.ndarray, np.ndarray]:
    """``mesh``'s rounded hull occupancy (256-px bundle, the default 96 grid, with or without
    depth carving) and its voxel centres ``(96, 96, 96, 3)`` in ``mesh``'s own frame."""
    bundle = render_bundle(mesh, tile=256)
    grid = 96
    occupancy = carve_occupancy(bundle, grid, round_corners=True, depth=depth)
    axis = -HULL_BOX + (np.arange(grid) + 0.5) * 2 * HULL_BOX / grid
    _, scale, offset = normalise_mesh(mesh)
    centres = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1)
    return occupancy, centres / scale + np.asarray(offset)


def carve_pillar(depth: DepthCarveParams | None) -> tuple[np.ndarray, np.ndarray]:
    """The grooved pillar's hull occupancy and voxel centres (:func:`hull_in_source_frame`)."""
    return hull_in_source_frame(grooved_pillar(), depth)


def in_groove(centres: np.ndarray, widen: float) -> np.ndarray:
    """Whether voxel centres lie in the groove's V (|x| < 0.2 (z - 0.1) / 0.36 above its tip),
    widened by ``widen`` on every side."""
    x, z = centres[..., 0], centres[..., 2]
    return (z > 0.1 - widen) & (np.abs(x) < 0.2 * (z - 0.1) / 0.36 + 1.5 * widen)


def test_a_groove_no_silhouette_shows_is_open_after_depth_carving():
    plain, centres = carve_pillar(None)
    carved, _ = carve_pillar(DepthCarveParams())
    # Inside the groove and clear of its walls, in the pillar's middle third.
    groove = in_groove(centres, -0.03) & (np.abs(centres[..., 1]) < 0.2) & (centres[..., 2] < 0.4)
    assert groove.sum() > 20
    assert (plain[groove] > 0.5).all()
    # Pixels next to the groove's crease are not trusted, so a strip above its tip stays.
    assert (carved[groove] < 0.5).mean() > 0.4


def test_depth_carving_keeps_the_voxels_inside_the_pillar():
    carved, centres = carve_pillar(DepthCarveParams())
    x, y, z = centres[..., 0], centres[..., 1], centres[..., 2]
    inset = 0.05
    inside = (np.hypot(x, z) < 0.5 - inset) & (np.abs(y) < 0.6 - inset) & ~in_groove(centres, inset)
    assert inside.sum() > 2000
    assert (carved[inside] >= 0.5).all()


def turned_box_occupancy(depth: DepthCarveParams | None) -> tuple[np.ndarray, np.ndarray]:
    """Rounded hull occupancy (96 grid) of a box turned 30 degrees about +Y between the views,
    and the voxel centres ``(96, 96, 96, 3)`` in the box's own (unturned) frame."""
    box = trimesh.creation.box(extents=(1.0, 0.8, 0.6))
    turn = trimesh.transformations.rotation_matrix(np.radians(30.0), [0.0, 1.0, 0.0])
    box.apply_transform(turn)
    occupancy, source = hull_in_source_frame(box, depth)
    return occupancy, source @ turn[:3, :3]  # rows times R = R^T applied: back to the box frame


def in_box(points: np.ndarray, pad: float) -> np.ndarray:
    return np.all(np.abs(points) < np.array([0.5, 0.4, 0.3]) + pad, axis=-1)


def test_a_box_turned_between_the_views_is_carved_down_to_its_faces():
    plain, points = turned_box_occupancy(None)
    carved, _ = turned_box_occupancy(DepthCarveParams())
    outside = ~in_box(points, 0.06) & (np.abs(points[..., 1]) < 0.3)
    hull_only = outside & (plain > 0.5)
    assert hull_only.sum() > 2000  # the hull's corners beyond the turned faces
    assert (carved[hull_only] < 0.5).mean() > 0.8
    # Rounding the hull's corners cuts into a turned box's edges; depth carving adds no loss.
    inside = in_box(points, -0.05) & (plain >= 0.5)
    assert (carved[inside] >= 0.5).all()


def test_a_view_whose_carving_would_uncover_a_silhouette_keeps_its_voxels():
    pillar = grooved_pillar()
    bundle = render_bundle(pillar, tile=256)
    tiles = bundle.normal_tiles().copy()
    # View 0's normals all tilted 40 degrees sideways: the plane they integrate to, anchored
    # on the hull at one side, runs through the object on the other.
    tilt = np.array([np.sin(np.radians(40.0)), 0.0, np.cos(np.radians(40.0))])
    tiles[0][bundle.masks()[0] > 0.5] = encode_normals(tilt[None, :])[0]
    tampered = Bundle.from_tiles(bundle.colour_tiles(), tiles, bundle.spec)
    grid = 96
    honest = carve_occupancy(tampered, grid, round_corners=True,
                             depth=DepthCarveParams(silhouette_tolerance=0.01))
    reckless = carve_occupancy(tampered, grid, round_corners=True,
                               depth=DepthCarveParams(silhouette_tolerance=1.0))
    plain = carve_occupancy(tampered, grid, round_corners=True, depth=None)
    # Without the check the tilted view carves away a large part of the pillar.
    assert (reckless > 0.5).sum() < 0.8 * (plain > 0.5).sum()
    assert (honest > 0.5).sum() > 0.95 * (plain > 0.5).sum()


def test_bundles_with_small_tiles_are_not_depth_carved():
    pillar = grooved_pillar()
    bundle = render_bundle(pillar, tile=128)
    plain = carve_occupancy(bundle, 48, round_corners=True, depth=None)
    carved = carve_occupancy(bundle, 48, round_corners=True, depth=DepthCarveParams())
    np.testing.assert_array_equal(carved, plain)
