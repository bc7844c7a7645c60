"""The LRM runs end to end on a bundle, round-trips its checkpoints and fails clearly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.bundle.cameras import BundleCameras
from models.bundle.spec import Bundle, BundleSpec, encode_normals
from models.reconstruct.lrm import cameras as lrm_cameras
from models.reconstruct.lrm.config import TINY
from models.reconstruct.lrm.encoder import interpolate_pos_embed
from models.reconstruct.lrm.model import LRM, CheckpointError, load_checkpoint, save_checkpoint
from models.reconstruct.lrm.reconstruct import clear_cache, load_cached, lrm_init

TILE = 64
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]


def disc_bundle(distance: float = 4.5) -> Bundle:
    """A coloured disc in each colour tile (front-facing normals under it), white elsewhere."""
    colours = np.full((4, TILE, TILE, 3), 255, np.uint8)
    normals = np.full((4, TILE, TILE, 3), 255, np.uint8)
    yy, xx = np.mgrid[:TILE, :TILE]
    disc = (xx - TILE / 2) ** 2 + (yy - TILE / 2) ** 2 < (TILE / 4) ** 2
    for view, colour in enumerate(COLOURS):
        colours[view][disc] = colour
        normals[view][disc] = encode_normals(np.array([0.0, 0.0, 1.0]))
    return Bundle.from_tiles(colours, normals, BundleSpec(distance=distance))


def tiny_model(seed: int = 0) -> LRM:
    """The tiny LRM with random weights, its SDF head shifted so the surface crosses the grid."""
    torch.manual_seed(seed)
    model = LRM(TINY).eval()
    images, cams = lrm_cameras.model_inputs(disc_bundle(), TINY.input_size, TINY.camera_radius)
    with torch.no_grad():
        planes = model.forward_planes(images, cams)
        grid = torch.linspace(-1, 1, 9)
        points = torch.stack(torch.meshgrid(grid, grid, grid, indexing="ij"), -1).reshape(-1, 3)
        sdf = model.synthesizer.decoder.net_sdf(model.synthesizer.features(planes, points[None]))
        model.synthesizer.decoder.net_sdf[-1].bias -= sdf.median()
    return model


@pytest.fixture()
def tiny_checkpoint(tmp_path):
    clear_cache()
    model = tiny_model()
    yield model, save_checkpoint(model, tmp_path / "tiny.ckpt")
    clear_cache()


@pytest.mark.parametrize("extractor", ["flexicubes", "marching_tetrahedra"])
def test_tiny_model_turns_a_bundle_into_a_mesh_in_the_bundle_frame(tiny_checkpoint, extractor):
    _, path = tiny_checkpoint
    bundle = disc_bundle()
    mesh = lrm_init(bundle, path, variant="tiny", extractor=extractor)

    assert len(mesh.faces) > 0 and np.isfinite(mesh.vertices).all()
    assert mesh.is_watertight and mesh.is_winding_consistent
    # the deformed grid spans grid_scale (+ the largest deformation) in model units,
    # that times d / r in the bundle frame
    max_deform = 1.0 / (TINY.grid_res * TINY.deformation_multiplier)
    half_extent = (TINY.grid_scale / 2 + max_deform) * bundle.spec.distance / TINY.camera_radius
    assert np.abs(mesh.vertices).max() <= half_extent + 1e-5
    assert mesh.visual.vertex_colors.shape == (len(mesh.vertices), 4)
    assert mesh.faces.max() < len(mesh.vertices)


def test_output_scale_follows_the_bundle_distance(tiny_checkpoint):
    _, path = tiny_checkpoint
    near = lrm_init(disc_bundle(distance=4.5), path, variant="tiny")
    far = lrm_init(disc_bundle(distance=9.0), path, variant="tiny")
    assert np.allclose(far.vertices, 2.0 * near.vertices, atol=1e-5)


def test_saved_checkpoint_loads_strictly_and_reproduces_outputs(tiny_checkpoint):
    model, path = tiny_checkpoint
    loaded = load_checkpoint(path, "tiny")
    images, cams = lrm_cameras.model_inputs(disc_bundle(), TINY.input_size, TINY.camera_radius)
    with torch.no_grad():
        expected = model.forward_planes(images, cams)
        actual = loaded.forward_planes(images, cams)
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert torch.equal(actual, expected)
    a = model.extract_mesh(expected)
    b = loaded.extract_mesh(actual)
    assert torch.equal(a.faces, b.faces) and torch.allclose(a.vertices, b.vertices)


def test_training_keys_beside_the_generator_are_ignored(tiny_checkpoint, tmp_path):
    _, path = tiny_checkpoint
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"]["lpips.net.weight"] = torch.zeros(3)
    ckpt["epoch"] = 7
    torch.save(ckpt, tmp_path / "with_lpips.ckpt")
    load_checkpoint(tmp_path / "with_lpips.ckpt", "tiny")


@pytest.mark.parametrize(
    "change, words",
    [
        ("drop", ["1 missing", "transformer.norm.weight"]),
        ("add", ["1 unexpected", "transformer.extra"]),
        ("reshape", ["1 shape-mismatched", "transformer.norm.weight"]),
    ],
)
def test_mismatched_checkpoint_fails_listing_the_keys(tiny_checkpoint, tmp_path, change, words):
    _, path = tiny_checkpoint
    ckpt = torch.load(path, weights_only=True)
    state = ckpt["state_dict"]
    if change == "drop":
        del state["lrm_generator.transformer.norm.weight"]
    elif change == "add":
        state["lrm_generator.transformer.extra"] = torch.zeros(1)
    else:
        state["lrm_generator.transformer.norm.weight"] = torch.zeros(5)
    torch.save(ckpt, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "bad.ckpt", "tiny")
    for word in words:
        assert word in str(err.value)


def test_checkpoint_of_another_variant_is_refused(tiny_checkpoint):
    _, path = tiny_checkpoint
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(path, "prm")


def test_missing_checkpoint_path_is_named(tmp_path):
    missing = tmp_path / "nowhere" / "final_ckpt.ckpt"
    with pytest.raises(FileNotFoundError, match="nowhere/final_ckpt.ckpt"):
        load_checkpoint(missing, "prm")
    with pytest.raises(FileNotFoundError, match="nowhere/final_ckpt.ckpt"):
        lrm_init(disc_bundle(), missing)


def test_models_are_cached_until_the_file_changes(tiny_checkpoint):
    model, path = tiny_checkpoint
    first = load_cached(path, "tiny", "cpu")
    assert load_cached(path, "tiny", "cpu") is first
    save_checkpoint(model, path)
    stat = path.stat()
    import os

    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert load_cached(path, "tiny", "cpu") is not first


def test_bundle_cameras_rotate_onto_the_model_cameras():
    spec = BundleSpec()
    bundle_cams = BundleCameras.from_spec(spec)
    radius = 3.5
    vectors = lrm_cameras.camera_vectors(spec.azimuths, spec.elevation, radius, spec.fov)
    rot = lrm_cameras.MODEL_FROM_BUNDLE
    for view in range(4):
        c2w_model = vectors[view, :12].double().numpy().reshape(3, 4)
        bundle_c2w = np.linalg.inv(bundle_cams.world_to_cam[view])
        # same camera axes after the frame rotation, eye scaled from distance d to radius r
        assert np.allclose(rot @ bundle_c2w[:3, :3], c2w_model[:, :3], atol=1e-6)
        assert np.allclose(rot @ bundle_c2w[:3, 3] * radius / spec.distance, c2w_model[:, 3],
                           atol=1e-6)
    focal = 0.5 / math.tan(math.radians(15))
    assert np.allclose(vectors[:, 12:].numpy(), [focal, focal, 0.5, 0.5], atol=1e-6)


def test_frame_conversion_round_trips_and_keeps_up():
    points = np.random.default_rng(0).normal(size=(10, 3))
    there = lrm_cameras.bundle_to_model(points, 4.5, 3.5)
    assert np.allclose(lrm_cameras.model_to_bundle(there, 4.5, 3.5), points)
    up = lrm_cameras.bundle_to_model(np.array([[0.0, 1.0, 0.0]]), 1.0, 1.0)
    assert np.allclose(up, [[0.0, 0.0, 1.0]]), "bundle +Y is the model's +Z"


def test_views_are_masked_onto_white_and_resized():
    bundle = disc_bundle()
    views = lrm_cameras.bundle_views(bundle, 32)
    assert views.shape == (4, 3, 32, 32) and views.dtype == torch.float32
    assert torch.all(views[:, :, 0, 0] == 1.0), "background is white"
    centre = views[0, :, 16, 16].numpy()
    assert np.allclose(centre, np.array(COLOURS[0]) / 255.0, atol=0.02)


def test_position_embedding_interpolates_to_the_input_grid():
    pos = torch.randn(1, 14 * 14 + 1, 8)
    assert torch.equal(interpolate_pos_embed(pos, 14, 14), pos)
    out = interpolate_pos_embed(pos, 20, 20)
    assert out.shape == (1, 401, 8)
    assert torch.equal(out[:, 0], pos[:, 0]), "the CLS position is kept"
