"""Colour projection from a bundle back onto geometry, and texture baking."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from PIL import Image

from models.evaluate.metrics import render_metrics
from models.export.bake import bake_texture
from models.reconstruct.texture import UNSEEN_COLOUR, fill_unseen, project_colours
from models.render.views import render_bundle

TILE = 64
#: The issue's acceptance threshold for a re-render of projected colours.
MIN_PSNR_DB = 24.0


def _sphere(subdivisions: int = 3) -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.9)


def _textured_sphere(texture: np.ndarray, subdivisions: int = 3) -> trimesh.Trimesh:
    """A sphere whose UVs are its front projection (x, y), so every point has a texel."""
    mesh = _sphere(subdivisions)
    v = mesh.vertices
    uv = np.stack([0.5 + 0.5 * v[:, 0] / 0.9, 0.5 + 0.5 * v[:, 1] / 0.9], axis=1)
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.fromarray(texture))
    mesh.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    return mesh


def _smooth_texture(size: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    rgb = np.stack(
        [
            0.5 + 0.4 * np.sin(2 * np.pi * 2 * xx),
            0.5 + 0.4 * np.cos(2 * np.pi * 1.5 * yy),
            0.5 + 0.3 * np.sin(2 * np.pi * (xx + yy)),
        ],
        axis=-1,
    )
    return np.round(rgb * 255).astype(np.uint8)


def _checker_texture(size: int = 64, cells: int = 4) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] * cells // size
    odd = ((xx + yy) % 2)[..., None].astype(bool)
    return np.where(odd, [220, 60, 40], [40, 90, 200]).astype(np.uint8)


def _uniform(mesh: trimesh.Trimesh, rgb: tuple[int, int, int]) -> trimesh.Trimesh:
    mesh = mesh.copy()
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=(*rgb, 255))
    return mesh


@pytest.fixture(scope="module")
def smooth_textured():
    mesh = _textured_sphere(_smooth_texture())
    return mesh, render_bundle(mesh, tile=TILE, normalise=False)


def test_projected_colours_of_a_textured_mesh_re_render_above_24_db(smooth_textured):
    mesh, bundle = smooth_textured
    painted = project_colours(bundle, mesh)
    assert painted.visual.kind == "vertex"
    assert np.array_equal(painted.faces, mesh.faces)
    metrics = render_metrics(bundle, painted)
    # On the object's own pixels, not diluted by the white background.
    assert metrics["colour_psnr_fg"] >= MIN_PSNR_DB
    assert metrics["colour_psnr"] >= metrics["colour_psnr_fg"]


def test_projection_recovers_vertex_colours_where_the_views_see_them():
    mesh = _sphere()
    v = mesh.vertices
    rgb = np.stack(
        [0.5 + 0.4 * np.sin(3 * v[:, 0]), 0.5 + 0.4 * np.cos(4 * v[:, 1]), 0.5 + 0.4 * v[:, 2]], 1
    )
    mesh.visual.vertex_colors = np.round(np.c_[rgb, np.ones(len(rgb))] * 255).astype(np.uint8)
    bundle = render_bundle(mesh, tile=TILE, normalise=False)
    painted = project_colours(bundle, mesh)
    # Near the equator every vertex faces some camera head-on (elevation 5 degrees).
    band = np.abs(v[:, 1]) < 0.5
    got = painted.visual.vertex_colors[band, :3].astype(float)
    want = mesh.visual.vertex_colors[band, :3].astype(float)
    assert np.abs(got - want).max() <= 8


def test_silhouette_pixels_do_not_bleed_white_into_the_colours():
    mesh = _uniform(_sphere(), (40, 60, 120))
    bundle = render_bundle(mesh, tile=TILE, normalise=False)
    painted = project_colours(bundle, mesh)
    rgb = painted.visual.vertex_colors[:, :3].astype(int)
    assert np.abs(rgb - [40, 60, 120]).max() <= 3
    # Without erosion the anti-aliased rim (half white) does leak in.
    raw = project_colours(bundle, mesh, erosion_px=0).visual.vertex_colors[:, :3].astype(int)
    assert np.abs(raw - [40, 60, 120]).max() > 20


def test_hidden_surfaces_take_no_colour_from_the_view_that_cannot_see_them():
    # A red plate in front (+Z) hides a small blue box from view 0 entirely.
    plate = _uniform(trimesh.creation.box(extents=(1.8, 1.8, 0.1)), (230, 20, 20))
    plate.apply_translation((0.0, 0.0, 0.5))
    # Subdivided so that most of its vertices lie inside faces, away from its outline.
    box = _uniform(
        trimesh.creation.box(extents=(0.5, 0.5, 0.5)).subdivide().subdivide(), (20, 20, 230)
    )
    box.apply_translation((0.0, 0.0, -0.4))
    scene = trimesh.util.concatenate([plate, box])
    bundle = render_bundle(scene, tile=TILE, normalise=False)
    front_only = project_colours(bundle, scene, view_weights=(1.0, 0.0, 0.0, 0.0))
    hidden = np.arange(len(plate.vertices), len(scene.vertices))
    rgb = front_only.visual.vertex_colors[hidden, :3] / 255.0
    # Nothing of the box is seen, so its whole component gets the unseen fill, not red.
    assert np.allclose(rgb, UNSEEN_COLOUR, atol=1 / 255)
    # With every view, the box is seen from behind and comes out blue.
    every = project_colours(bundle, scene).visual.vertex_colors[hidden, :3].astype(int)
    assert np.median(every[:, 2]) > 200 and np.median(every[:, 0]) < 60


def test_view_weights_select_which_views_paint():
    # Front hemisphere red, back blue: with only view 0 the back is filled from the front.
    mesh = _sphere()
    front = mesh.vertices[:, 2] > 0
    colours = np.where(front[:, None], [230, 20, 20, 255], [20, 20, 230, 255]).astype(np.uint8)
    mesh.visual.vertex_colors = colours
    bundle = render_bundle(mesh, tile=TILE, normalise=False)
    back = mesh.vertices[:, 2] < -0.6
    every = project_colours(bundle, mesh).visual.vertex_colors[back, :3].astype(int)
    only_front = project_colours(bundle, mesh, view_weights=(1, 0, 0, 0))
    filled = only_front.visual.vertex_colors[back, :3].astype(int)
    assert np.all(every[:, 2] > 200)
    assert np.all(filled[:, 0] > 200)


def test_view_weights_must_match_the_views():
    mesh = _sphere(1)
    bundle = render_bundle(mesh, tile=32, normalise=False)
    with pytest.raises(ValueError, match="4 values"):
        project_colours(bundle, mesh, view_weights=(1.0, 1.0))


def test_fill_unseen_propagates_ring_by_ring_and_greys_unseen_pieces():
    # A strip of triangles 0-1-2-3-4-5 plus a separate triangle 6-7-8.
    faces = np.array([[0, 1, 2], [1, 3, 2], [2, 3, 4], [3, 5, 4], [6, 7, 8]])
    colours = np.zeros((9, 3))
    seen = np.zeros(9, dtype=bool)
    colours[[0, 1]] = [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    seen[[0, 1]] = True
    out = fill_unseen(colours, seen, faces)
    assert np.allclose(out[2], [0.5, 0.0, 0.5])  # first ring: mean of 0 and 1
    assert np.allclose(out[3], [0.0, 0.0, 1.0])  # first ring: neighbour of 1 only
    assert np.allclose(out[4], (out[2] + out[3]) / 2)  # second ring: mean of filled 2 and 3
    assert np.allclose(out[6:], UNSEEN_COLOUR)
    assert np.array_equal(out[:2], colours[:2])


def test_baked_texture_keeps_sharp_detail_that_vertex_colours_lose():
    mesh = _textured_sphere(_checker_texture())
    bundle = render_bundle(mesh, tile=TILE, normalise=False)
    baked = bake_texture(mesh, bundle, size=256)
    assert isinstance(baked.visual, trimesh.visual.TextureVisuals)
    assert baked.visual.material.baseColorTexture.size == (256, 256)
    assert len(baked.visual.uv) == len(baked.vertices)
    baked_metrics = render_metrics(bundle, baked)
    vertex_metrics = render_metrics(bundle, project_colours(bundle, mesh))
    # Same geometry (split along UV seams only)...
    assert baked_metrics["mask_iou"] == pytest.approx(1.0)
    assert baked_metrics["normal_angle_deg"] < 1.0
    # ...and the colours of a 4 x 4 checker survive in the texture.
    assert baked_metrics["colour_psnr_fg"] >= MIN_PSNR_DB
    assert baked_metrics["colour_psnr_fg"] > vertex_metrics["colour_psnr_fg"] + 3.0
