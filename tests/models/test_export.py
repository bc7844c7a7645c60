"""GLB/OBJ export: frames, colour spaces, textures, and the preview sheet."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from PIL import Image

from models.geometry.glb import (
    _read_accessor,
    _split_glb,
    export_glb,
    export_obj,
    linear_to_srgb,
    load_glb,
    srgb_to_linear,
)
from models.render.preview import preview_sheet

TILE = 64


def _coloured_sphere() -> trimesh.Trimesh:
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.9)
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (len(mesh.vertices), 4), dtype=np.uint8)
    colours[:, 3] = 255
    mesh.visual.vertex_colors = colours
    return mesh


def _asymmetric_object() -> trimesh.Trimesh:
    """A body with a nose on +Z and a tower on +X, coloured by where each vertex is.

    No rotation or mirror maps it onto itself, so a flipped or turned export shows.
    """
    body = trimesh.creation.box(extents=(1.0, 0.8, 0.8))
    nose = trimesh.creation.box(extents=(0.3, 0.3, 0.5))
    nose.apply_translation((0.0, -0.1, 0.6))
    tower = trimesh.creation.box(extents=(0.3, 0.9, 0.3))
    tower.apply_translation((0.55, 0.3, -0.2))
    mesh = trimesh.util.concatenate([body, nose, tower]).subdivide().subdivide()
    v = mesh.vertices
    rgb = np.stack([0.5 + 0.5 * v[:, 0], 0.5 + 0.5 * v[:, 1], 0.5 + 0.5 * v[:, 2]], axis=1)
    rgba = np.concatenate([rgb, np.ones((len(v), 1))], axis=1)
    mesh.visual.vertex_colors = np.round(np.clip(rgba, 0, 1) * 255).astype(np.uint8)
    return mesh


def test_srgb_and_linear_are_inverse_and_fix_the_endpoints():
    x = np.linspace(0.0, 1.0, 101)
    assert np.allclose(linear_to_srgb(srgb_to_linear(x)), x, atol=1e-12)
    assert srgb_to_linear(np.array([0.0, 1.0])).tolist() == [0.0, 1.0]
    # Mid-grey sRGB 0.5 is about 0.214 linear.
    assert srgb_to_linear(np.array([0.5]))[0] == pytest.approx(0.2140, abs=1e-4)


def test_glb_round_trip_keeps_geometry_order_and_srgb_colours(tmp_path):
    mesh = _coloured_sphere()
    back = load_glb(export_glb(mesh, tmp_path / "a.glb"))
    assert np.allclose(back.vertices, mesh.vertices, atol=1e-6)
    assert np.array_equal(back.faces, mesh.faces)
    assert np.array_equal(back.visual.vertex_colors, mesh.visual.vertex_colors)


def test_glb_colour_0_is_stored_linear(tmp_path):
    mesh = _coloured_sphere()
    gltf, blob = _split_glb(export_glb(mesh, tmp_path / "a.glb").read_bytes())
    (primitive,) = gltf["meshes"][0]["primitives"]
    stored = _read_accessor(gltf, blob, primitive["attributes"]["COLOR_0"])
    expected = srgb_to_linear(mesh.visual.vertex_colors[:, :3] / 255.0)
    assert np.allclose(stored[:, :3], expected, atol=1e-6)
    # A white, non-metallic material, so a viewer shows the colours as they are.
    pbr = gltf["materials"][primitive["material"]]["pbrMetallicRoughness"]
    assert pbr["metallicFactor"] == 0.0
    assert pbr["baseColorFactor"] == [1.0, 1.0, 1.0, 1.0]


def test_plain_trimesh_load_of_our_glb_sees_linear_colours(tmp_path):
    # The reason load_glb exists: trimesh hands COLOR_0 back verbatim (linear).
    mesh = _coloured_sphere()
    path = export_glb(mesh, tmp_path / "a.glb")
    (geom,) = trimesh.load(path, force="scene").geometry.values()
    raw = np.asarray(geom.visual.vertex_attributes["color"])[:, :3]
    expected = srgb_to_linear(mesh.visual.vertex_colors[:, :3] / 255.0)
    assert np.allclose(raw, expected, atol=1e-6)


def test_glb_from_another_writer_has_its_colour_0_read_as_linear(tmp_path):
    mesh = _coloured_sphere()
    raw = mesh.visual.vertex_colors.copy()
    path = tmp_path / "other.glb"
    path.write_bytes(trimesh.Scene([mesh, mesh.copy()]).export(file_type="glb"))
    back = load_glb(path)
    expected = np.round(linear_to_srgb(raw[:, :3] / 255.0) * 255).astype(int)
    assert np.abs(back.visual.vertex_colors[: len(raw), :3].astype(int) - expected).max() <= 1


def test_textured_glb_keeps_uvs_and_srgb_texture_without_colour_0(tmp_path):
    mesh = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    rng = np.random.default_rng(1)
    uv = rng.random((len(mesh.vertices), 2))
    image = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "RGB")
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=image)
    mesh.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    path = export_glb(mesh, tmp_path / "t.glb")
    gltf, _ = _split_glb(path.read_bytes())
    assert "COLOR_0" not in gltf["meshes"][0]["primitives"][0]["attributes"]
    back = load_glb(path)
    assert np.allclose(back.visual.uv, uv, atol=1e-6)
    assert np.array_equal(np.asarray(back.visual.material.baseColorTexture), np.asarray(image))


def test_obj_export_writes_vertex_colours(tmp_path):
    mesh = _coloured_sphere()
    back = trimesh.load(export_obj(mesh, tmp_path / "a.obj"), process=False)
    assert len(back.vertices) == len(mesh.vertices)
    assert np.array_equal(back.visual.vertex_colors[:, :3], mesh.visual.vertex_colors[:, :3])


def test_reloaded_glb_renders_like_the_bundle_from_view_0(tmp_path):
    from models.geometry.mesh import normalise_mesh
    from models.render.views import render_bundle, render_views

    source = _asymmetric_object()
    bundle = render_bundle(source, tile=TILE)
    asset, _, _ = normalise_mesh(source)  # the bundle frame, as the pipeline's meshes are
    back = load_glb(export_glb(asset, tmp_path / "asset.glb"))
    views = render_views(back, bundle.spec)
    ref_colour = bundle.colour_tiles()[0].astype(int)
    assert np.abs(views.colour_tiles()[0].astype(int) - ref_colour).max() <= 2
    assert np.abs(views.normal_tiles()[0].astype(int) - bundle.normal_tiles()[0]).max() <= 2
    # The comparison does catch a mirrored or turned asset.
    for transform in (np.diag([-1.0, 1.0, 1.0, 1.0]), np.diag([-1.0, 1.0, -1.0, 1.0])):
        wrong = asset.copy()
        wrong.apply_transform(transform)
        wrong_view = render_views(wrong, bundle.spec).colour_tiles()[0].astype(int)
        assert np.abs(wrong_view - ref_colour).mean() > 10


def test_preview_sheet_shows_the_four_bundle_views_and_a_three_quarter_view(tmp_path):
    from models.render.preview import preview_caption_height
    from models.render.views import render_bundle

    mesh = _asymmetric_object()
    path = preview_sheet(mesh, tmp_path / "preview.png", tile=TILE)
    sheet = np.asarray(Image.open(path).convert("RGB")).astype(int)
    caption = preview_caption_height(TILE)
    assert sheet.shape == (2 * TILE + caption, 5 * TILE, 3)
    tiles = [sheet[caption : caption + TILE, i * TILE : (i + 1) * TILE] for i in range(5)]
    bundle_views = render_bundle(mesh, tile=TILE).colour_tiles().astype(int)
    for i in range(4):
        assert np.abs(tiles[i] - bundle_views[i]).max() <= 1
    assert all(np.abs(tiles[4] - bundle_views[i]).mean() > 5 for i in range(4))
    shaded = [sheet[caption + TILE :, i * TILE : (i + 1) * TILE] for i in range(5)]
    for flat, lit in zip(tiles, shaded, strict=True):
        background = (flat == 255).all(axis=-1)
        assert (lit[background] == 255).all()  # shading leaves the background white
        assert np.abs(lit - flat)[~background].mean() > 5  # and changes the object
    # Every tile has a dark caption above it.
    for i in range(5):
        assert sheet[:caption, i * TILE : (i + 1) * TILE].min() < 100
