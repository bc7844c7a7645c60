"""The visual-hull init: the 4 masks carved into a grid hold every hole and gap the views show."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from models.geometry.mesh import normalise_mesh
from models.reconstruct.hull import (
    HULL_BOX,
    HULL_LEVEL,
    HullParams,
    HullParamsError,
    carve_occupancy,
    visual_hull,
)
from models.render.views import render_bundle


def two_spheres() -> trimesh.Trimesh:
    """Two spheres side by side along x with a gap of half a radius between them."""
    left = trimesh.creation.icosphere(subdivisions=3, radius=0.4)
    right = left.copy()
    left.apply_translation([-0.5, 0.0, 0.0])
    right.apply_translation([0.5, 0.0, 0.0])
    return trimesh.util.concatenate([left, right])


def test_hull_of_two_separate_spheres_has_two_components():
    bundle = render_bundle(two_spheres(), tile=128)
    hull = visual_hull(bundle, HullParams(grid=64))
    parts = hull.split(only_watertight=False)
    assert len(parts) == 2
    assert all(part.is_watertight for part in parts)


def test_carving_keeps_every_voxel_inside_the_object():
    source = trimesh.creation.box((1.0, 0.6, 0.8))
    bundle = render_bundle(source, tile=128)
    reference, _, _ = normalise_mesh(source)
    grid = 48
    occupancy = carve_occupancy(bundle, grid)
    axis = -HULL_BOX + (np.arange(grid) + 0.5) * 2 * HULL_BOX / grid
    centres = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1)
    lo, hi = reference.bounds
    inside = np.all((centres > lo) & (centres < hi), axis=-1)
    assert inside.sum() > 1000
    assert (occupancy[inside] >= HULL_LEVEL).all()
    # And it is no blob: two opposing perspective views leave a bulge, not much more.
    assert (occupancy >= HULL_LEVEL).sum() < 2 * inside.sum()


def test_hull_of_a_torus_facing_a_camera_has_its_hole():
    # Axis along z: the front camera looks through the hole.
    torus = trimesh.creation.torus(major_radius=0.6, minor_radius=0.2)
    hull = visual_hull(render_bundle(torus, tile=128), HullParams(grid=64))
    assert hull.is_watertight
    assert hull.euler_number == 0  # genus 1


def test_unknown_hull_param_names_the_nearest():
    with pytest.raises(HullParamsError, match="did you mean 'grid'"):
        HullParams.from_mapping({"grids": 64})


def test_hull_grid_out_of_range_is_refused():
    with pytest.raises(HullParamsError, match="grid"):
        HullParams.from_mapping({"grid": 4})


def test_negative_depth_margin_is_refused():
    with pytest.raises(HullParamsError, match="depth_margin"):
        HullParams.from_mapping({"depth_margin": -0.01})


def test_rounding_pulls_a_cylinders_hull_toward_the_cylinder():
    # Four views alone leave a cylinder's hull a rounded square prism.
    cylinder = trimesh.creation.cylinder(radius=0.5, height=0.8, sections=64)
    cylinder.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    bundle = render_bundle(cylinder, tile=128)
    reference, _, _ = normalise_mesh(cylinder)
    plain = visual_hull(bundle, HullParams(grid=48, round_corners=False, depth_carve=False))
    rounded = visual_hull(bundle, HullParams(grid=48, round_corners=True, depth_carve=False))
    assert abs(rounded.volume - reference.volume) < 0.7 * abs(plain.volume - reference.volume)
    assert rounded.euler_number == 2


def test_rounding_leaves_a_box_square():
    box = trimesh.creation.box((1.0, 0.6, 0.8))
    bundle = render_bundle(box, tile=128)
    plain = visual_hull(bundle, HullParams(grid=48, round_corners=False))
    rounded = visual_hull(bundle, HullParams(grid=48, round_corners=True))
    assert rounded.volume == pytest.approx(plain.volume, rel=0.02)


def test_hull_of_a_tall_cylinder_ends_at_the_spec_box_without_a_tent_over_its_top():
    # Seen from 5 degrees above, a point a little over the top disc's centre projects inside
    # the disc's thin ellipse in every view; the spec's box (longest side 1.8) bounds it.
    cylinder = trimesh.creation.cylinder(radius=0.5, height=1.8, sections=64)
    cylinder.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    bundle = render_bundle(cylinder, tile=128)
    hull = visual_hull(bundle, HullParams(grid=64))
    step = 2.0 * HULL_BOX / 64
    assert hull.vertices[:, 1].max() <= 0.9 + step / 2
    assert hull.vertices[:, 1].min() >= -0.9 - step / 2
