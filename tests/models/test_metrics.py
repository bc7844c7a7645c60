"""Metrics on cases whose answer is known: geometry, topology, images, re-renders."""

from __future__ import annotations

import math

import numpy as np
import pytest
import trimesh

from models.evaluate.metrics import (
    chamfer_fscore,
    mesh_health,
    normal_consistency,
    psnr,
    sample_surface,
    seen_fscore,
    ssim,
)

SAMPLES = 4096


def _sphere(radius: float) -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions=4, radius=radius)


# --------------------------------------------------------------------------- Chamfer / F-score


def test_mesh_against_itself_scores_chamfer_zero_and_fscore_one():
    mesh = trimesh.creation.box(extents=(1.2, 0.6, 1.8))
    m = chamfer_fscore(mesh, mesh, samples=SAMPLES)
    assert m["chamfer"] == 0.0
    assert m["fscore@0.05"] == 1.0
    assert m["fscore@0.1"] == 1.0


def test_samples_lie_on_the_surface_and_are_area_weighted():
    mesh = _sphere(0.7)
    points, normals = sample_surface(mesh, SAMPLES, seed=3)
    assert np.allclose(np.linalg.norm(points, axis=1), 0.7, atol=2e-3)
    # Outward face normals of a sphere point along the position.
    assert np.all(np.einsum("ij,ij->i", normals, points / 0.7) > 0.99)
    # Area weighting: the two halves of a box split 1:3 in area get samples 1:3.
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    pts, _ = sample_surface(box, SAMPLES, seed=0)
    top = np.mean(np.isclose(pts[:, 1], 0.5))
    assert top == pytest.approx(1 / 6, abs=0.02)


def test_chamfer_of_concentric_spheres_is_the_radius_difference():
    m = chamfer_fscore(_sphere(0.6), _sphere(0.8), samples=SAMPLES, seed=1)
    assert m["chamfer"] == pytest.approx(0.2, rel=0.05)
    # Every point is 0.2 away: nothing within either threshold.
    assert m["fscore@0.05"] == 0.0
    assert m["fscore@0.1"] == 0.0


def test_fscore_counts_points_within_tau_of_a_translated_plane():
    plane = trimesh.Trimesh(
        vertices=[[-0.9, -0.9, 0], [0.9, -0.9, 0], [0.9, 0.9, 0], [-0.9, 0.9, 0]],
        faces=[[0, 1, 2], [0, 2, 3]],
    )
    shifted = plane.copy()
    shifted.apply_translation((0.0, 0.0, 0.07))
    m = chamfer_fscore(plane, shifted, samples=SAMPLES)
    # Shifted along its normal by 0.07: beyond tau 0.05, within tau 0.1.
    assert m["fscore@0.05"] == 0.0
    assert m["fscore@0.1"] == 1.0
    assert m["chamfer"] == pytest.approx(0.07, rel=0.05)


def test_fscore_to_the_surface_counts_a_plane_just_within_tau_that_samples_miss():
    plane = trimesh.Trimesh(
        vertices=[[-0.9, -0.9, 0], [0.9, -0.9, 0], [0.9, 0.9, 0], [-0.9, 0.9, 0]],
        faces=[[0, 1, 2], [0, 2, 3]],
    )
    # The other diagonal, so that the two planes' samples do not lie over each other.
    shifted = trimesh.Trimesh(vertices=plane.vertices + [0.0, 0.0, 0.045],
                              faces=[[0, 1, 3], [1, 2, 3]])
    # 4096 samples over 3.24 square units lie about 0.03 apart: the nearest sample of the
    # other plane is often farther than 0.05 although every point of it is 0.045 away.
    sampled = chamfer_fscore(plane, shifted, samples=SAMPLES)
    exact = chamfer_fscore(plane, shifted, samples=SAMPLES, to_surface=True)
    assert sampled["fscore@0.05"] < 0.9
    assert exact["fscore@0.05"] == 1.0
    assert exact["chamfer"] == pytest.approx(0.045, abs=1e-9)


def test_mesh_against_itself_scores_zero_to_the_surface():
    mesh = trimesh.creation.box(extents=(1.2, 0.6, 1.8))
    m = chamfer_fscore(mesh, mesh, samples=SAMPLES, to_surface=True)
    assert m["chamfer"] < 1e-12
    assert m["fscore@0.05"] == 1.0


def test_fscore_of_a_translated_sphere_follows_the_analytic_share():
    # A sphere moved by d lies within tau of the original where d*|cos(theta)| < tau, and
    # |cos(theta)| is uniform on a sphere, so P = R = F = min(1, tau / d) (d << radius).
    sphere = _sphere(0.8)
    for d in (0.03, 0.08, 0.2):
        moved = sphere.copy()
        moved.apply_translation((d, 0.0, 0.0))
        m = chamfer_fscore(sphere, moved)
        for tau in (0.05, 0.1):
            assert m[f"fscore@{tau:g}"] == pytest.approx(min(1.0, tau / d), abs=0.03)


def test_precision_and_recall_follow_prediction_and_reference():
    # Prediction = the top face of the reference box: precise but incomplete.
    full = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    top = full.submesh([np.flatnonzero(full.face_normals[:, 1] > 0.5)], append=True)
    m = chamfer_fscore(top, full)
    # Sampled surfaces: a few points fall between the reference's samples.
    assert m["precision@0.05"] > 0.99
    assert m["recall@0.05"] < 0.3


def _dented(mesh: trimesh.Trimesh, below: float, depth: float) -> trimesh.Trimesh:
    """``mesh`` with every vertex under height ``below`` moved ``depth`` toward the axis."""
    vertices = np.array(mesh.vertices)
    low = vertices[:, 1] < below
    vertices[low, ::2] *= 1.0 - depth
    return trimesh.Trimesh(vertices, mesh.faces, process=False)


def test_seen_fscore_ignores_errors_on_surface_no_view_sees():
    reference = _sphere(0.9)
    prediction = _dented(reference, -0.5, 0.3)
    # Faces above -0.4 never touch a moved vertex (the edges are about 0.06 long).
    seen_ref = reference.triangles_center[:, 1] > -0.4
    seen_pred = prediction.triangles_center[:, 1] > -0.4
    # The default sample count: with 4096, two samplings of one surface lie about tau apart.
    seen = seen_fscore(prediction, reference, seen_pred, seen_ref)
    assert chamfer_fscore(prediction, reference)["fscore@0.05"] < 0.95
    assert seen["fscore"] > 0.99
    assert seen["reference_seen_share"] == pytest.approx(0.72, abs=0.02)


def test_seen_fscore_counts_a_dent_on_seen_surface():
    reference = _sphere(0.9)
    prediction = _dented(reference, -0.5, 0.3)
    everything = np.ones(len(reference.faces), dtype=bool)
    seen = seen_fscore(prediction, reference, everything, everything)
    full = chamfer_fscore(prediction, reference)
    assert seen["fscore"] == pytest.approx(full["fscore@0.05"], abs=0.02)
    assert seen["fscore"] < 0.95


def test_seen_fscore_recall_counts_only_the_seen_reference():
    # The prediction is the reference's upper half: it misses only what no view sees.
    reference = _sphere(0.9)
    upper = reference.triangles_center[:, 1] > 0.0
    prediction = reference.submesh([np.flatnonzero(upper)], append=True)
    seen = seen_fscore(prediction, reference, np.ones(len(prediction.faces), dtype=bool), upper)
    assert seen["recall"] > 0.99
    assert chamfer_fscore(prediction, reference)["recall@0.05"] < 0.6


def test_seen_fscore_is_zero_when_no_view_sees_the_prediction():
    reference = _sphere(0.9)
    seen = seen_fscore(reference, reference, np.zeros(len(reference.faces), dtype=bool),
                       np.ones(len(reference.faces), dtype=bool), samples=SAMPLES)
    assert seen["precision"] == 0.0
    assert seen["fscore"] == 0.0


# --------------------------------------------------------------------------- normal consistency


def test_normal_consistency_is_one_for_a_mesh_against_itself():
    mesh = trimesh.creation.box(extents=(1.0, 0.5, 1.5))
    assert normal_consistency(mesh, mesh, samples=SAMPLES) == pytest.approx(1.0)


def test_normal_consistency_ignores_orientation_but_sees_wrong_shapes():
    sphere = _sphere(0.8)
    flipped = sphere.copy()
    flipped.invert()
    assert normal_consistency(sphere, flipped, samples=SAMPLES) == pytest.approx(1.0, abs=1e-3)
    cube = trimesh.creation.box(extents=(1.6, 1.6, 1.6))
    assert normal_consistency(sphere, cube, samples=SAMPLES) < 0.95


# --------------------------------------------------------------------------- mesh health


def test_cube_is_healthy():
    h = mesh_health(trimesh.creation.box(extents=(1.0, 1.0, 1.0)))
    assert h["faces"] == 12
    assert h["vertices"] == 8
    assert h["components"] == 1
    assert h["watertight"] is True
    assert h["non_manifold_edges"] == 0
    assert h["boundary_edges"] == 0
    assert h["degenerate_faces"] == 0
    assert h["volume"] == pytest.approx(1.0)


def test_seams_split_for_uvs_do_not_count_as_holes():
    cube = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    unmerged = trimesh.Trimesh(
        vertices=cube.vertices[cube.faces].reshape(-1, 3),
        faces=np.arange(36).reshape(-1, 3),
        process=False,
    )
    h = mesh_health(unmerged)
    assert h["vertices"] == 36
    assert h["watertight"] is True
    assert h["components"] == 1


def test_mesh_health_leaves_the_callers_mesh_as_it_was():
    cube = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    unmerged = trimesh.Trimesh(
        vertices=cube.vertices[cube.faces].reshape(-1, 3),
        faces=np.arange(36).reshape(-1, 3),
        process=False,
    )
    before = unmerged.vertices.copy(), unmerged.faces.copy()
    mesh_health(unmerged)
    assert np.array_equal(unmerged.vertices, before[0])
    assert np.array_equal(unmerged.faces, before[1])


def test_broken_mesh_reports_its_defects():
    cube = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    faces = cube.faces[1:]  # a hole: one triangle missing
    extra_v = np.array([[2.0, 2.0, 2.0], [3.0, 2.0, 2.0], [2.0, 3.0, 2.0], [5.0, 5.0, 5.0]])
    vertices = np.vstack([cube.vertices, extra_v])
    e0, e1 = cube.faces[1][0], cube.faces[1][1]
    faces = np.vstack(
        [
            faces,
            [[8, 9, 10]],  # a second, separate component
            [[e0, e1, 11]],  # a third face on an existing edge: non-manifold
            [[8, 8, 9]],  # a degenerate (collapsed) face
        ]
    )
    h = mesh_health(trimesh.Trimesh(vertices=vertices, faces=faces, process=False))
    assert h["watertight"] is False
    assert h["components"] == 2
    assert h["non_manifold_edges"] == 1
    assert h["boundary_edges"] > 0
    assert h["degenerate_faces"] == 1


def test_empty_mesh_has_no_components_and_is_not_watertight():
    h = mesh_health(trimesh.Trimesh())
    assert h["faces"] == 0 and h["components"] == 0 and h["watertight"] is False


# --------------------------------------------------------------------------- images


def test_psnr_of_a_known_error():
    a = np.zeros((16, 16, 3))
    b = np.full((16, 16, 3), 0.1)
    assert psnr(a, b) == pytest.approx(20.0)
    assert psnr(a, a) == math.inf


def test_psnr_with_mask_counts_only_masked_pixels():
    a = np.zeros((16, 16, 3))
    b = a.copy()
    b[:8] = 1.0
    mask = np.zeros((16, 16), dtype=bool)
    mask[8:] = True
    assert psnr(a, b, mask) == math.inf
    assert psnr(a, b) == pytest.approx(10 * math.log10(2))


def test_ssim_is_one_for_identical_images():
    rng = np.random.default_rng(0)
    img = rng.random((32, 32, 3))
    assert ssim(img, img) == pytest.approx(1.0)


def test_ssim_of_two_flat_images_is_the_luminance_term():
    a = np.full((24, 24, 3), 0.2)
    b = np.full((24, 24, 3), 0.6)
    c1 = 0.01**2
    expected = (2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1)
    assert ssim(a, b) == pytest.approx(expected, rel=1e-6)


def test_ssim_falls_with_noise():
    rng = np.random.default_rng(0)
    img = np.clip(rng.random((1, 32, 32, 1)) * 0.5 + 0.25, 0, 1)
    noisy = [np.clip(img + rng.normal(0, s, img.shape), 0, 1) for s in (0.02, 0.1, 0.3)]
    scores = [ssim(img, n) for n in noisy]
    assert 1.0 > scores[0] > scores[1] > scores[2]



def _ssim_over_every_window(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM as Wang et al. define it, filtering the whole images (the reference)."""
    from scipy.ndimage import correlate1d

    from models.evaluate.metrics import SSIM_K1, SSIM_K2, SSIM_SIGMA, SSIM_WINDOW

    x = np.arange(SSIM_WINDOW) - (SSIM_WINDOW - 1) / 2.0
    taps = np.exp(-(x**2) / (2.0 * SSIM_SIGMA**2))
    taps /= taps.sum()
    half = SSIM_WINDOW // 2

    def blur(t: np.ndarray) -> np.ndarray:
        for axis in (1, 2):
            t = correlate1d(t, taps, axis=axis, mode="constant")
        return t[:, half:-half, half:-half]

    c1, c2 = SSIM_K1**2, SSIM_K2**2
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    return float((num / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))).mean())


@pytest.mark.parametrize("patch", [(0, 0), (20, 5), (33, 40)])
def test_ssim_of_images_that_differ_in_a_patch_equals_the_whole_image_filter(patch):
    rng = np.random.default_rng(1)
    a = rng.random((2, 48, 56, 3))
    b = a.copy()
    row, col = patch
    b[1, row:row + 3, col:col + 4] = rng.random((min(3, 48 - row), min(4, 56 - col), 3))
    assert ssim(a, b) == pytest.approx(_ssim_over_every_window(a, b), abs=1e-12)

# --------------------------------------------------------------------------- re-render vs bundle

TILE = 64


def _coloured(mesh: trimesh.Trimesh, rgb: tuple[int, int, int]) -> trimesh.Trimesh:
    mesh = mesh.copy()
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=(*rgb, 255))
    return mesh


@pytest.fixture(scope="module")
def sphere_bundle():
    from models.render.views import render_bundle

    mesh = _coloured(_sphere(0.9), (200, 120, 40))
    return mesh, render_bundle(mesh, tile=TILE, normalise=False)


def test_render_metrics_of_the_bundle_source_are_perfect(sphere_bundle):
    from models.evaluate.metrics import render_metrics

    mesh, bundle = sphere_bundle
    m = render_metrics(bundle, mesh)
    assert m["mask_iou"] == 1.0
    assert m["normal_angle_deg"] < 0.5  # 8-bit encoding only
    assert m["colour_psnr"] == math.inf
    assert m["colour_ssim"] == pytest.approx(1.0)
    assert len(m["per_view"]) == 4


def test_render_metrics_mask_iou_of_a_shrunk_sphere_is_its_area_ratio(sphere_bundle):
    from models.evaluate.metrics import render_metrics

    mesh, bundle = sphere_bundle
    small = mesh.copy()
    small.apply_scale(0.8)
    m = render_metrics(bundle, small)
    # Silhouette discs nest: IoU = (r_small / r)^2, about 0.8^2 under this near-orthographic view.
    assert m["mask_iou"] == pytest.approx(0.64, abs=0.03)


def test_render_metrics_psnr_of_a_recoloured_mesh_follows_the_colour_error(sphere_bundle):
    from models.evaluate.metrics import render_metrics

    mesh, bundle = sphere_bundle
    m = render_metrics(bundle, _coloured(mesh, (200, 120, 90)))
    # Blue differs by 50/255 on every object pixel (edge pixels blend with white, a bit less).
    expected = 10 * math.log10(1.0 / ((50 / 255) ** 2 / 3))
    assert m["colour_psnr_fg"] == pytest.approx(expected, abs=0.7)
    assert m["colour_psnr"] > m["colour_psnr_fg"]
    assert m["mask_iou"] == 1.0
    assert m["colour_ssim"] < 1.0


def test_render_metrics_normal_error_of_a_turned_plate_is_the_turn_angle():
    from models.evaluate.metrics import render_metrics
    from models.render.views import render_bundle

    plate = trimesh.Trimesh(
        vertices=[[-0.6, -0.6, 0], [0.6, -0.6, 0], [0.6, 0.6, 0], [-0.6, 0.6, 0]],
        faces=[[0, 1, 2], [0, 2, 3]],
    )
    bundle = render_bundle(plate, tile=TILE, normalise=False)
    turned = plate.copy()
    turned.apply_transform(trimesh.transformations.rotation_matrix(math.radians(10), (0, 1, 0)))
    m = render_metrics(bundle, turned)
    # Seen from the front and the back, every shared pixel's normal is off by the turn; the
    # side views see the plate edge-on in the bundle, so they share no pixels. Anti-aliased
    # outline pixels (normals blended with white) add a little on top.
    assert 10.0 - 0.5 < m["normal_angle_deg"] < 10.0 + 2.0
    assert 0.8 < m["mask_iou"] < 1.0


def test_render_metrics_leave_colour_out_for_a_mesh_without_colour(sphere_bundle):
    from models.evaluate.metrics import render_metrics

    mesh, bundle = sphere_bundle
    plain = trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.faces, process=False)
    assert plain.visual.kind is None
    m = render_metrics(bundle, plain)
    assert m["mask_iou"] == 1.0  # the geometry is still judged
    for key in ("colour_psnr", "colour_psnr_fg", "colour_ssim"):
        assert math.isnan(m[key]), key
        assert all(math.isnan(view[key]) for view in m["per_view"]), key


def test_evaluate_asset_reports_no_colour_figures_for_a_mesh_without_colour(sphere_bundle):
    from models.evaluate.asset import evaluate_asset

    mesh, bundle = sphere_bundle
    plain = trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.faces, process=False)
    metrics = evaluate_asset(bundle, plain)
    assert "mask_iou" in metrics
    assert not {"colour_psnr", "colour_psnr_fg", "colour_ssim"} & metrics.keys()


def test_seen_fscore_to_the_surface_counts_a_shell_just_within_tau():
    # Another tessellation, so that the two spheres' samples do not lie over each other.
    reference = _sphere(0.9)
    prediction = trimesh.creation.uv_sphere(radius=0.86, count=[64, 64])
    seen_ref = np.ones(len(reference.faces), dtype=bool)
    seen_pred = np.ones(len(prediction.faces), dtype=bool)
    assert seen_fscore(prediction, reference, seen_pred, seen_ref, samples=SAMPLES,
                       to_surface=True)["fscore"] == 1.0
    assert seen_fscore(prediction, reference, seen_pred, seen_ref,
                       samples=SAMPLES)["fscore"] < 0.9
