"""The depth term: integrated normal maps as per-pixel log-depth targets, and the loss over them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from models.bundle.cameras import BundleCameras
from models.geometry.mesh import normalise_mesh
from models.raster import get_rasteriser
from models.reconstruct.depth_target import depth_loss, depth_targets
from models.reconstruct.hull import visual_hull
from models.reconstruct.refine import RefineParams, refine_mesh
from models.render.views import render_bundle

RESOLUTION = 128


@pytest.fixture(scope="module")
def sphere_case():
    """A sphere's 256-px bundle, its bundle-frame mesh and its depth targets at 128 px."""
    source = trimesh.creation.icosphere(subdivisions=4, radius=0.7)
    bundle = render_bundle(source, tile=256)
    mesh, _, _ = normalise_mesh(source)
    targets = depth_targets(bundle, RESOLUTION, torch.device("cpu"))
    return bundle, mesh, targets


def rasterised(bundle, mesh: trimesh.Trimesh, vertices: torch.Tensor | None = None):
    """``(clip, faces, raster)`` of ``mesh`` (or ``vertices`` on its faces) in the 4 views."""
    mvp = torch.from_numpy(BundleCameras.from_spec(bundle.spec).mvp.astype(np.float32))
    if vertices is None:
        vertices = torch.from_numpy(np.asarray(mesh.vertices, dtype=np.float32))
    faces = torch.from_numpy(np.asarray(mesh.faces, dtype=np.int64))
    homo = torch.cat([vertices, torch.ones_like(vertices[:, :1])], dim=1)
    clip = torch.einsum("bij,vj->bvi", mvp, homo)
    raster = get_rasteriser().rasterise(clip, faces, (RESOLUTION, RESOLUTION))
    return clip, faces, raster


def loss_of(bundle, mesh, targets, vertices=None) -> torch.Tensor:
    clip, faces, raster = rasterised(bundle, mesh, vertices)
    return depth_loss(clip, faces, raster.tri_id, raster.bary, targets, scale=0.005)


def test_targets_match_the_true_log_depth_up_to_one_constant_per_piece(sphere_case):
    bundle, mesh, targets = sphere_case
    clip, _, raster = rasterised(bundle, mesh)
    true_depth = get_rasteriser().interpolate(clip[..., 3:4], raster)[..., 0].reshape(-1)
    gap = true_depth[targets.index].log() - targets.log_depth
    assert targets.pieces == 4  # one per view: a sphere has no depth jump
    for piece in range(targets.pieces):
        values = gap[targets.piece == piece]
        assert float(values.max() - values.min()) < 0.01  # about 0.045 bundle units


def test_the_true_mesh_has_a_small_depth_loss(sphere_case):
    bundle, mesh, targets = sphere_case
    assert float(loss_of(bundle, mesh, targets)) < 0.2


def test_a_bulge_no_silhouette_shows_raises_the_depth_loss(sphere_case):
    bundle, mesh, targets = sphere_case
    vertices = np.asarray(mesh.vertices, dtype=np.float32).copy()
    # Push the surface out along the diagonals between the views (azimuths 45, 135, ...),
    # where no silhouette reaches: x and z both large.
    radius = np.linalg.norm(vertices, axis=1)
    diagonal = np.abs(vertices[:, 0] * vertices[:, 2]) / np.maximum(radius, 1e-6) ** 2
    vertices *= (1.0 + 0.12 * diagonal)[:, None]
    bulged = float(loss_of(bundle, mesh, targets, torch.from_numpy(vertices)))
    assert bulged > 2.0 * float(loss_of(bundle, mesh, targets))


def test_the_depth_loss_does_not_change_when_the_object_scales_about_each_camera(sphere_case):
    bundle, mesh, targets = sphere_case
    # A piece's constant absorbs a common factor on its depths: scaling every view's depth by
    # the same factor leaves each piece's residuals as they were.
    clip, faces, raster = rasterised(bundle, mesh)
    scaled = clip.clone()
    scaled[..., 3] *= 1.1
    plain = depth_loss(clip, faces, raster.tri_id, raster.bary, targets, 0.005)
    moved = depth_loss(scaled, faces, raster.tri_id, raster.bary, targets, 0.005)
    assert float(moved) == pytest.approx(float(plain), abs=1e-4)


def test_the_depth_loss_does_not_push_a_view_along_its_axis(sphere_case):
    bundle, mesh, targets = sphere_case
    # A bulge makes each piece's residuals lopsided. Were the pieces' constants held fixed,
    # their gradients would add up to a push along the view axis that the next step's
    # constants follow: the surface drifts. Scaling one view's depths is that push.
    vertices = np.asarray(mesh.vertices, dtype=np.float32).copy()
    vertices[:, 2] += 0.15 * np.clip(vertices[:, 2], 0.0, None)
    clip, faces, raster = rasterised(bundle, mesh, torch.from_numpy(vertices))
    clip.requires_grad_(True)
    depth_loss(clip, faces, raster.tri_id, raster.bary, targets, 0.005).backward()
    grad_w = clip.grad[..., 3]
    along_axis = (grad_w * clip.detach()[..., 3]).sum(1)  # per view
    size = grad_w.abs().sum(1) * clip.detach()[..., 3].abs().max()
    assert float(size.min()) > 0
    assert (along_axis.abs() < 1e-3 * size).all()


def test_the_depth_loss_has_gradients_on_the_vertices(sphere_case):
    bundle, mesh, targets = sphere_case
    vertices = torch.from_numpy(np.asarray(mesh.vertices, dtype=np.float32) * 1.02)
    vertices.requires_grad_(True)
    loss_of(bundle, mesh, targets, vertices).backward()
    assert vertices.grad is not None and float(vertices.grad.abs().sum()) > 0


def diagonal_radius(mesh: trimesh.Trimesh, height: float) -> float:
    """Largest distance from the +Y axis of ``mesh``'s section at ``height``, within 10 degrees
    of the diagonals between the views."""
    section = mesh.section(plane_origin=[0, height, 0], plane_normal=[0, 1, 0])
    points = np.concatenate(section.discrete)
    angle = np.degrees(np.arctan2(points[:, 2], points[:, 0])) % 90.0
    near = np.abs(angle - 45.0) < 10.0
    return float(np.hypot(points[near, 0], points[near, 2]).max())


def test_with_the_depth_term_a_cylinder_keeps_its_diagonals_on_its_wall():
    # Seen from 4 views at 90 degrees a cylinder's silhouettes bound a square prism; its
    # diagonals are pinned by the normal maps alone.
    source = trimesh.creation.cylinder(radius=0.5, height=1.2, sections=96)
    source.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    bundle = render_bundle(source, tile=256)
    reference, _, _ = normalise_mesh(source)
    true_radius = float(np.hypot(reference.vertices[:, 0], reference.vertices[:, 2]).max())
    params = RefineParams(coarse_steps=40, fine_steps=60, resolution=128,
                          fine_depth_weight=1.0, plateau_steps=0)
    mesh = refine_mesh(bundle, visual_hull(bundle), params)
    # Without the term the diagonals end 0.016 out (0.766 against 0.75); with it 0.002.
    assert diagonal_radius(mesh, 0.0) < true_radius + 0.008


def test_a_refine_stage_without_the_hull_init_integrates_as_after_it():
    # The pipeline may run init and refinement in two processes: refinement's own integration
    # must be cut at the same steps as the one the hull init left behind.
    from models.reconstruct.hull import bundle_integrals

    nut = trimesh.creation.cylinder(radius=0.5, height=0.5)
    nut.apply_translation([0.0, 0.0, 0.35])
    shaft = trimesh.creation.cylinder(radius=0.25, height=1.2)
    mesh = trimesh.util.concatenate([nut, shaft])
    after_hull = render_bundle(mesh, tile=256, up="z")
    visual_hull(after_hull)  # carves with depth: integrates with its own fronts
    alone = render_bundle(mesh, tile=256, up="z")
    for one, other in zip(bundle_integrals(after_hull, 2), bundle_integrals(alone, 2), strict=True):
        assert np.array_equal(one.pieces, other.pieces)
        np.testing.assert_allclose(one.log_depth, other.log_depth, equal_nan=True)


def test_the_hulls_depth_carving_and_the_depth_term_integrate_each_view_once(monkeypatch):
    from models.reconstruct import depth

    bundle = render_bundle(trimesh.creation.icosphere(subdivisions=3, radius=0.7), tile=256)
    calls = []
    original = depth.integrate_log_depth
    monkeypatch.setattr(depth, "integrate_log_depth",
                        lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs))
    visual_hull(bundle)  # carves with depth at 256-px tiles
    depth_targets(bundle, RESOLUTION, torch.device("cpu"))
    depth_targets(bundle, 2 * RESOLUTION, torch.device("cpu"))
    assert len(calls) == 4


def test_the_compiled_centre_weights_equal_the_torch_formula_to_the_bit():
    from models.reconstruct.depth_target import _final_weights, _final_weights_torch

    generator = torch.Generator().manual_seed(3)
    pieces = 6  # piece 4 stays empty
    piece = torch.randint(0, 4, (5000,), generator=generator)
    piece[torch.rand(5000, generator=generator) < 0.1] = 5
    values = 0.02 * torch.randn(5000, generator=generator) + 0.1 * piece.float()
    values[::97] += 0.5  # outliers the bounded penalty lets go of
    compiled = _final_weights(values, piece, pieces, 0.01)
    reference = _final_weights_torch(values, piece, pieces, 0.01)
    assert compiled.dtype == reference.dtype == torch.float32
    assert torch.equal(compiled, reference)


def test_the_compiled_depth_loss_matches_the_torch_formula_and_its_gradient(sphere_case):
    from models.reconstruct.depth_target import DepthTargets

    bundle, mesh, targets = sphere_case
    generator = torch.Generator().manual_seed(5)
    base = torch.from_numpy(np.asarray(mesh.vertices, dtype=np.float32))
    # A mesh off its target (a lopsided squash and noise), so every piece has residuals.
    moved = base * torch.tensor([1.05, 0.93, 1.0]) + 0.01 * torch.randn(base.shape,
                                                                         generator=generator)
    vertices = moved.clone().requires_grad_(True)
    clip, faces, raster = rasterised(bundle, mesh, vertices)
    compiled = depth_loss(clip, faces, raster.tri_id, raster.bary, targets, 0.005)
    compiled.backward()
    # The reference: the torch formula (what float64 tensors take) on the same rasterisation;
    # float32 sums, compiled or torch, drift from it by about 0.1 % of the largest gradient.
    exact = moved.double().requires_grad_(True)
    mvp = torch.from_numpy(BundleCameras.from_spec(bundle.spec).mvp)
    clip64 = torch.einsum("bij,vj->bvi", mvp, torch.cat([exact, torch.ones_like(exact[:, :1])], 1))
    targets64 = DepthTargets(index=targets.index, log_depth=targets.log_depth.double(),
                             piece=targets.piece, pieces=targets.pieces)
    reference = depth_loss(clip64, faces, raster.tri_id, raster.bary.double(), targets64, 0.005)
    reference.backward()
    assert float(reference) > 0.05  # not a trivially small loss
    # The loss sums every covered pixel in float32: its relative error reaches a few 1e-5.
    assert float(compiled.detach()) == pytest.approx(float(reference), rel=5e-5)
    error = (vertices.grad.double() - exact.grad).norm(dim=1).max()
    assert float(error) < 0.005 * float(exact.grad.norm(dim=1).max())


def test_a_mesh_covering_no_target_pixel_has_zero_depth_loss_and_gradient(sphere_case):
    bundle, mesh, targets = sphere_case
    # A speck in a corner of the box: in every view it lies outside the sphere's silhouette.
    base = torch.from_numpy(np.asarray(mesh.vertices, dtype=np.float32))
    vertices = (0.01 * base + torch.tensor([0.85, 0.85, 0.85])).requires_grad_(True)
    clip, faces, raster = rasterised(bundle, mesh, vertices)
    loss = depth_loss(clip, faces, raster.tri_id, raster.bary, targets, 0.005)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert vertices.grad is not None and float(vertices.grad.abs().max()) == 0.0
