"""The hull as a prior on a refined mesh: an outer bound, and a shape where no view sees."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from models.reconstruct.hull import HullParams, visual_hull
from models.reconstruct.hull_prior import (
    HullPriorParams,
    hull_prior,
    hull_surface_projection,
    pull_into_hull,
)
from models.render.views import render_bundle


@pytest.fixture(scope="module")
def ball_bundle():
    return render_bundle(trimesh.creation.icosphere(subdivisions=4, radius=0.9), tile=128)


@pytest.fixture(scope="module")
def ball_hull(ball_bundle):
    return visual_hull(ball_bundle, HullParams(grid=64))


def flattened_top(mesh: trimesh.Trimesh, height: float) -> trimesh.Trimesh:
    """``mesh`` with every vertex above ``height`` pressed down onto it (a membrane cap)."""
    vertices = np.asarray(mesh.vertices).copy()
    vertices[:, 1] = np.minimum(vertices[:, 1], height)
    return trimesh.Trimesh(vertices, mesh.faces, process=False)


def test_projection_onto_a_sphere_hull_gives_signed_distance_and_surface_point():
    hull = trimesh.creation.icosphere(subdivisions=5, radius=0.5)
    points = np.array([[0.0, 0.0, 0.7], [0.0, 0.3, 0.0]])
    foot, signed, _ = hull_surface_projection(hull, points)
    assert signed[0] == pytest.approx(0.2, abs=0.005)
    assert signed[1] == pytest.approx(-0.2, abs=0.005)
    assert np.linalg.norm(foot, axis=1) == pytest.approx([0.5, 0.5], abs=0.005)


def test_pull_into_hull_moves_only_vertices_beyond_the_tolerance():
    hull = trimesh.creation.icosphere(subdivisions=5, radius=0.5)
    vertices = np.array([[0.0, 0.0, 0.7], [0.0, 0.3, 0.0], [0.503, 0.0, 0.0]])
    moved, count = pull_into_hull(vertices, hull, tolerance=0.01)
    assert count == 1
    assert np.linalg.norm(moved[0]) == pytest.approx(0.51, abs=0.005)
    assert np.array_equal(moved[1:], vertices[1:])


def test_an_unseen_flat_cap_on_a_ball_takes_the_hulls_round_shape(ball_bundle, ball_hull):
    # The cameras sit about 0.39 above the origin: a flat cap at 0.6 faces away from all of
    # them, and the seen surface around it lies on the hull, so the hull's dome comes back.
    capped = flattened_top(ball_hull, 0.6)
    result, report = hull_prior(ball_bundle, capped, ball_hull)
    assert any(weight == 1.0 for _, _, weight in report.regions)
    assert result.vertices[:, 1].max() > 0.85


def test_an_unseen_cap_on_a_coarse_mesh_takes_the_hulls_shape(ball_bundle):
    # Edges of about 0.15: within 0.1 of the cap no seen face has all its corners, and the
    # band must reach further to tell how the seen surface lies on the hull.
    coarse = trimesh.creation.icosphere(subdivisions=3, radius=0.9)
    hull = visual_hull(ball_bundle, HullParams(grid=64))
    capped = flattened_top(coarse, 0.6)
    narrow = HullPriorParams(band_edges=0.0)
    _, report = hull_prior(ball_bundle, capped, hull, params=narrow)
    assert report.regions and all(weight == 0.0 for _, _, weight in report.regions)
    result, report = hull_prior(ball_bundle, capped, hull)
    assert any(weight > 0.0 for _, _, weight in report.regions)
    assert result.vertices[:, 1].max() > 0.7


def test_an_unseen_cap_stays_a_membrane_where_the_seen_surface_left_the_hull(
        ball_bundle, ball_hull):
    # The whole surface sits 0.05 inside the hull: the hull does not fit this object near the
    # cap either, so the cap is left as refinement made it.
    # With the rounded-end rule off: that rule alone would raise this cap halfway (below).
    shrunk = ball_hull.copy()
    shrunk.apply_scale(0.95)
    capped = flattened_top(shrunk, 0.6)
    params = HullPriorParams(rounded_facing=2.0)
    result, report = hull_prior(ball_bundle, capped, ball_hull, params=params)
    assert report.regions and all(weight == 0.0 for _, _, weight in report.regions)
    assert result.vertices[:, 1].max() == pytest.approx(0.6)


def test_hull_prior_pulls_a_bulge_back_within_the_bound(ball_bundle, ball_hull):
    bulged = ball_hull.copy()
    vertices = np.asarray(bulged.vertices).copy()
    vertices[:, 0] *= 1.1  # 0.09 beyond the ball's sides
    bulged = trimesh.Trimesh(vertices, bulged.faces, process=False)
    params = HullPriorParams(outside_tolerance=0.005)
    result, report = hull_prior(ball_bundle, bulged, ball_hull, bound=ball_hull, params=params)
    assert report.pulled > 0
    assert np.abs(result.vertices[:, 0]).max() < 0.92


def test_a_rounded_end_goes_halfway_to_the_hull_even_where_its_band_left_the_hull(
        ball_bundle, ball_hull):
    # A ball 0.045 inside its hull: by distance alone its unseen bottom stays as it is, but the
    # seen surface beside the bottom already faces down (a rounded end), so the bottom goes
    # halfway down to the hull's.
    shrunk = ball_hull.copy()
    shrunk.apply_scale(0.95)
    bottom = float(shrunk.vertices[:, 1].min())
    hull_bottom = float(ball_hull.vertices[:, 1].min())
    off, _ = hull_prior(ball_bundle, shrunk, ball_hull, params=HullPriorParams(rounded_facing=2.0))
    on, report = hull_prior(ball_bundle, shrunk, ball_hull,
                            params=HullPriorParams(rounded_facing=0.75, rounded_weight=0.5))
    assert float(off.vertices[:, 1].min()) == pytest.approx(bottom)
    assert 0.5 in [weight for _, _, weight in report.regions]
    assert float(on.vertices[:, 1].min()) == pytest.approx((bottom + hull_bottom) / 2, abs=0.005)


def test_a_flat_end_beside_upright_walls_stays_a_membrane():
    # A can: its walls meet the unseen lid at a right angle, so the lid is not a rounded end
    # and, with the walls inside the hull, keeps the height refinement gave it.
    can = trimesh.creation.cylinder(radius=0.6, height=1.8, sections=64)
    can = trimesh.Trimesh(*trimesh.remesh.subdivide_to_size(can.vertices, can.faces, 0.04))
    can.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    bundle = render_bundle(can, tile=128)
    hull = visual_hull(bundle, HullParams(grid=64))
    shrunk = can.copy()
    shrunk.apply_scale(0.95)
    lid = float(shrunk.vertices[:, 1].max())
    params = HullPriorParams(rounded_facing=0.75, rounded_weight=0.5)
    result, report = hull_prior(bundle, shrunk, hull, params=params)
    assert report.regions and all(weight == 0.0 for _, _, weight in report.regions)
    assert result.vertices[:, 1].max() == pytest.approx(lid)


def test_a_flat_lid_between_walls_that_lie_on_the_hull_stays_flat():
    # A low box: refinement leaves its walls on the hull, as closely as a ball's band, but
    # they meet the unseen lid at a right angle, so the lid keeps the height refinement gave
    # it instead of taking the hull's (the hull's top is a tent the views cannot rule out).
    box = trimesh.creation.box((1.8, 0.9, 1.4))  # already in the bundle frame
    bundle = render_bundle(box, tile=128)
    hull = visual_hull(bundle, HullParams(grid=64))
    refined = flattened_top(hull, 0.42)  # the cameras sit about 0.39 up: the lid is unseen
    kept, _ = hull_prior(bundle, refined, hull)
    by_distance, _ = hull_prior(bundle, refined, hull,
                                params=HullPriorParams(fits_min_facing=-2.0))
    assert float(kept.vertices[:, 1].max()) == pytest.approx(0.42)
    assert float(by_distance.vertices[:, 1].max()) > 0.44
