"""BUNDLE_SPEC.md as tests: layout, encoding, cameras, sidecar, and every conformance value.

The conformance table is checked on exact renders by the project's renderer
(:func:`models.render.views.render_bundle`) at the spec's 512-pixel tiles, +-2 per channel.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import trimesh

from models.bundle.cameras import BundleCameras
from models.bundle.spec import (
    Bundle,
    BundleError,
    BundleSpec,
    decode_normals,
    encode_normals,
    foreground_mask,
    join_tiles,
    split_tiles,
)
from models.render.views import orbit_cameras, render_bundle, render_views

TILE = 512
TOLERANCE = 2  # per channel, for rounding


def _pixel(cameras: BundleCameras, view: int, point) -> tuple[int, int]:
    """(row, column) of the pixel whose area holds the world ``point`` in ``view``."""
    p = cameras.mvp[view] @ np.array([*point, 1.0])
    x, y = p[0] / p[3], p[1] / p[3]
    t = cameras.tile
    return int((1 - y) / 2 * t), int((x + 1) / 2 * t)


def _assert_colour(actual, expected) -> None:
    diff = np.abs(np.asarray(actual, dtype=int) - np.asarray(expected))
    assert diff.max() <= TOLERANCE, f"{tuple(int(a) for a in actual)} != {expected}"


@pytest.fixture(scope="module")
def sphere_bundle() -> Bundle:
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=0.9)
    return render_bundle(sphere, tile=TILE, normalise=False)


@pytest.fixture(scope="module")
def box_bundle() -> Bundle:
    box = trimesh.creation.box(extents=(1.8, 0.4, 1.8))
    return render_bundle(box, tile=TILE, normalise=False)


# -- layout, encoding, foreground rule -----------------------------------------------------------


def test_bundle_is_two_rows_of_four_square_tiles(sphere_bundle):
    assert sphere_bundle.image.shape == (2 * TILE, 4 * TILE, 3)
    assert sphere_bundle.image.dtype == np.uint8
    colours, normals = split_tiles(sphere_bundle.image)
    assert colours.shape == normals.shape == (4, TILE, TILE, 3)
    assert np.array_equal(join_tiles(colours, normals), sphere_bundle.image)
    # tile (row r, column c) covers x in [T c, T c + T), y in [T r, T r + T)
    assert np.array_equal(normals[2], sphere_bundle.image[TILE:, 2 * TILE : 3 * TILE])


def test_normal_encoding_flips_x_and_round_trips():
    n = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.6, -0.8, 0.0]])
    rgb = encode_normals(n)
    assert rgb[0].tolist() == [0, 128, 128]
    assert rgb[1].tolist() == [128, 255, 128]
    assert np.allclose(decode_normals(rgb), n, atol=0.01)


def test_white_decodes_to_length_sqrt3_and_is_background():
    white = np.full((1, 3), 255, np.uint8)
    from models.bundle.spec import decode_normals_raw

    assert math.isclose(np.linalg.norm(decode_normals_raw(white)[0]), math.sqrt(3), rel_tol=1e-6)
    assert not foreground_mask(white)[0]
    unit = encode_normals(np.array([[0.3, -0.4, math.sqrt(1 - 0.25)]]))
    assert foreground_mask(unit)[0]


# -- cameras ---------------------------------------------------------------------------------------


def test_cameras_sit_on_the_spec_orbit():
    cams = BundleCameras.from_spec(BundleSpec())
    e = math.radians(5.0)
    assert np.allclose(cams.eyes[0], 4.5 * np.array([0, math.sin(e), math.cos(e)]))
    assert np.allclose(cams.eyes[1], 4.5 * np.array([math.cos(e), math.sin(e), 0]))
    assert math.isclose(cams.focal_px, 955.4, abs_tol=0.05)


def test_pixel_centres_follow_the_spec():
    cams = BundleCameras.from_spec(BundleSpec())
    # the point seen at the centre of pixel (i, j) from view 0 projects to its NDC centre
    i, j = 300, 100
    x, y = 2 * (i + 0.5) / TILE - 1, 1 - 2 * (j + 0.5) / TILE
    ray_cam = np.array([x / cams.projection[0, 0], y / cams.projection[1, 1], -1.0])
    c2w = np.linalg.inv(cams.world_to_cam[0])
    point = c2w[:3, :3] @ (3.0 * ray_cam) + c2w[:3, 3]
    assert _pixel(cams, 0, point) == (j, i)


# -- sidecar ---------------------------------------------------------------------------------------


def test_sidecar_travels_beside_the_image(tmp_path, sphere_bundle):
    path = sphere_bundle.save(tmp_path / "bundle.png")
    data = json.loads((tmp_path / "bundle.json").read_text())
    assert data["spec"] == "kiss3d-bundle-v1" and data["tile"] == TILE
    loaded = Bundle.load(path)
    assert loaded.spec == sphere_bundle.spec
    assert np.array_equal(loaded.image, sphere_bundle.image)


def test_bundle_without_sidecar_gets_defaults_and_tile_from_image(tmp_path):
    image = np.full((256, 512, 3), 255, np.uint8)
    from PIL import Image

    Image.fromarray(image).save(tmp_path / "b.png")
    b = Bundle.load(tmp_path / "b.png")
    assert b.spec.tile == 128
    assert (b.spec.distance, b.spec.fov, b.spec.elevation) == (4.5, 30.0, 5.0)
    with pytest.raises(BundleError):
        Bundle.from_image(np.zeros((256, 256, 3), np.uint8))


# -- conformance table -----------------------------------------------------------------------------


def test_sphere_normal_at_tile_centre(sphere_bundle):
    for view in range(4):
        _assert_colour(sphere_bundle.normal_tiles()[view][TILE // 2, TILE // 2], (128, 128, 255))


def test_sphere_silhouette_radius_and_area(sphere_bundle):
    areas = sphere_bundle.masks().sum(axis=(1, 2))
    for area in areas:
        assert abs(area - 119_500) < 0.005 * 119_500
        assert abs(math.sqrt(area / math.pi) - 195.0) < 0.5


def test_face_with_normal_plus_z_from_view_0(sphere_bundle):
    cube = trimesh.creation.box(extents=(1.2, 1.2, 1.2))  # top above the camera: front only
    bundle = render_bundle(cube, tile=TILE, normalise=False)
    cams = BundleCameras.from_spec(bundle.spec)
    row, col = _pixel(cams, 0, (0.0, 0.0, 0.6))
    _assert_colour(bundle.normal_tiles()[0][row, col], (128, 116, 255))


def test_top_face_of_the_flat_box_from_view_0(box_bundle):
    cams = BundleCameras.from_spec(box_bundle.spec)
    row, col = _pixel(cams, 0, (0.0, 0.2, 0.0))
    _assert_colour(box_bundle.normal_tiles()[0][row, col], (128, 255, 139))


def test_face_with_normal_plus_x_from_view_0():
    # a quad facing +X, left of the camera, so view 0 sees its front obliquely
    verts = np.array([[-0.6, -0.5, -0.5], [-0.6, -0.5, 0.9], [-0.6, 0.5, 0.9], [-0.6, 0.5, -0.5]])
    quad = trimesh.Trimesh(verts, [[0, 2, 1], [0, 3, 2]], process=False)
    assert np.allclose(quad.face_normals, [1, 0, 0])
    cams = orbit_cameras([0.0], [5.0], BundleSpec(tile=TILE))
    normals = render_views(quad, cams).normal_tiles()[0]
    row, col = _pixel(cams, 0, (-0.6, 0.0, 0.5))
    _assert_colour(normals[row, col], (0, 128, 128))


def test_face_with_normal_plus_x_from_view_1(box_bundle):
    cams = BundleCameras.from_spec(box_bundle.spec)
    row, col = _pixel(cams, 1, (0.9, 0.0, 0.0))
    _assert_colour(box_bundle.normal_tiles()[1][row, col], (128, 116, 255))


def test_background_is_white_in_both_rows(sphere_bundle, box_bundle):
    for bundle in (sphere_bundle, box_bundle):
        for tiles in (bundle.colour_tiles(), bundle.normal_tiles()):
            for corner in (tiles[:, 0, 0], tiles[:, -1, -1], tiles[:, 0, -1], tiles[:, -1, 0]):
                assert (corner == 255).all()
        # away from the silhouette (where anti-aliasing blends), background is pure white
        from scipy.ndimage import binary_dilation

        near = np.stack([binary_dilation(m, iterations=2) for m in bundle.masks()])
        assert (bundle.normal_tiles()[~near] == 255).all()
        assert (bundle.colour_tiles()[~near] == 255).all()
