"""3D-to-3D (``kiss3dgen-mesh``) on tiny random Flux + ControlNet-Union folders loaded like real
weights."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from models.generate.base import GenerationRequest, GeneratorContext, GeneratorInputError
from models.generate.kiss3dgen import pipeline as kpipe
from models.generate.kiss3dgen.mesh_to_3d import (
    MeshToBundleParams,
    init_mesh_from_sidecar,
    mesh_to_bundle,
)
from models.generate.kiss3dgen.params import Kiss3DGenParamsError
from models.generate.kiss3dgen.pipeline import WeightsMissingError
from models.generate.kiss3dgen.tiny import save_tiny_controlnet, save_tiny_flux
from models.geometry.mesh import load_mesh
from tests.models.kiss3dgen_fixtures import TEST_TILE, tiny_params_of, write_coloured_box

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("weights")
    return (save_tiny_flux(root / "flux", seed=0),
            save_tiny_controlnet(root / "FLUX.1-dev-Controlnet-Union", seed=0))


@pytest.fixture(scope="module")
def box_path(tmp_path_factory) -> Path:
    return write_coloured_box(tmp_path_factory.mktemp("mesh") / "box.glb")


@pytest.fixture(autouse=True)
def _fresh_cache():
    kpipe.clear_cache()
    yield
    kpipe.clear_cache()


def params(weights, **overrides) -> MeshToBundleParams:
    flux, controlnet = weights
    return tiny_params_of(MeshToBundleParams, flux, controlnet_path=controlnet, **overrides)


def test_defaults_are_kiss3dgens_3d_to_3d_settings():
    p = MeshToBundleParams()
    assert (p.strength, p.controlnet_conditioning_scale, p.control_guidance_end) == (0.95, 0.1, 0.2)
    assert (p.control_mode, p.tile_down_scale, p.mode) == ("tile", 1, "enhance")


def test_an_unknown_key_is_rejected_naming_the_nearest_valid_one():
    with pytest.raises(Kiss3DGenParamsError, match="did you mean 'strength'"):
        MeshToBundleParams.from_mapping({"strenght": 0.5})


def test_a_strength_outside_0_1_is_rejected_by_name():
    with pytest.raises(Kiss3DGenParamsError, match="strength must be in"):
        MeshToBundleParams.from_mapping({"strength": 1.5})


def test_an_unknown_mode_is_rejected_by_name():
    with pytest.raises(Kiss3DGenParamsError, match="'recolour'"):
        MeshToBundleParams.from_mapping({"mode": "recolour"})


def test_an_edit_produces_a_bundle_of_the_requested_size_in_the_reference_frame(weights, box_path):
    out = mesh_to_bundle(box_path, "a red box", 0, params(weights, mode="edit"))
    bundle = out.generated.bundle
    assert bundle.image.shape == (2 * TEST_TILE, 4 * TEST_TILE, 3)
    assert bundle.image.dtype == np.uint8
    assert bundle.spec.distance == 4.2 and bundle.spec.producer == "kiss3dgen"
    assert (bundle.spec.scale, bundle.spec.offset) == (out.reference.spec.scale,
                                                       out.reference.spec.offset)
    assert bundle.spec.extra["mode"] == "edit" and "keep_geometry" not in bundle.spec.extra
    assert out.init_mesh is None


def test_the_same_seed_gives_the_same_bundle(weights, box_path):
    p = params(weights)
    a = mesh_to_bundle(box_path, "a wooden box", 3, p).generated.raw_image
    b = mesh_to_bundle(box_path, "a wooden box", 3, p).generated.raw_image
    np.testing.assert_array_equal(a, b)


def test_a_different_edit_prompt_gives_a_different_bundle(weights, box_path):
    p = params(weights, mode="edit")
    a = mesh_to_bundle(box_path, "a wooden box", 3, p).generated.raw_image
    b = mesh_to_bundle(box_path, "a shiny metal chest", 3, p).generated.raw_image
    assert np.abs(a.astype(int) - b).max() > 0


def test_the_controlnet_conditioning_scale_changes_the_bundle(weights, box_path):
    base = params(weights, control_guidance_end=1.0)  # 3 steps: 0.2 of them is none
    weak = mesh_to_bundle(box_path, "a box", 1, replace(base, controlnet_conditioning_scale=0.0))
    strong = mesh_to_bundle(box_path, "a box", 1, replace(base, controlnet_conditioning_scale=2.0))
    assert np.abs(weak.generated.raw_image.astype(int) - strong.generated.raw_image).max() > 0


def test_without_the_controlnet_it_runs_plain_img2img_and_needs_no_controlnet_path(weights,
                                                                                   box_path):
    flux, _ = weights
    p = tiny_params_of(MeshToBundleParams, flux, use_controlnet=False)
    out = mesh_to_bundle(box_path, "a box", 1, p)
    assert out.generated.bundle.image.shape == (2 * TEST_TILE, 4 * TEST_TILE, 3)


def test_a_lower_strength_stays_closer_to_the_reference(weights, box_path):
    base = params(weights, steps=10, use_controlnet=False)
    ref = mesh_to_bundle(box_path, "a box", 2, base).reference.image.astype(float)
    low = mesh_to_bundle(box_path, "a box", 2, replace(base, strength=0.2)).generated.raw_image
    high = mesh_to_bundle(box_path, "a box", 2, replace(base, strength=1.0)).generated.raw_image
    assert np.abs(low - ref).mean() < np.abs(high - ref).mean()


def test_retexture_returns_the_input_mesh_unchanged_as_the_init(weights, box_path):
    out = mesh_to_bundle(box_path, "a blue box", 0, params(weights, mode="retexture"))
    original = load_mesh(box_path)
    assert out.keep_geometry
    np.testing.assert_array_equal(out.init_mesh.vertices, original.vertices)
    np.testing.assert_array_equal(out.init_mesh.faces, original.faces)
    extra = out.generated.bundle.spec.extra
    assert extra["keep_geometry"] is True and Path(extra["init_mesh"]) == box_path.resolve()


def test_the_retexture_sidecar_names_a_mesh_that_reads_back_equal_to_the_input(
    weights, box_path, tmp_path
):
    from models.bundle.spec import Bundle

    out = mesh_to_bundle(box_path, "a blue box", 0, params(weights, mode="retexture"))
    saved = out.generated.bundle.save(tmp_path / "bundle.png")
    again = init_mesh_from_sidecar(Bundle.load(saved))
    np.testing.assert_array_equal(again.vertices, load_mesh(box_path).vertices)
    in_frame = init_mesh_from_sidecar(Bundle.load(saved), bundle_frame=True)
    assert np.ptp(in_frame.vertices, axis=0).max() == pytest.approx(1.8)  # the render's frame


def test_missing_weights_name_every_missing_path(box_path, tmp_path):
    p = tiny_params_of(MeshToBundleParams, tmp_path / "no-flux",
                       controlnet_path=tmp_path / "no-controlnet",
                       lora_path=tmp_path / "no-lora.safetensors")
    with pytest.raises(WeightsMissingError) as info:
        mesh_to_bundle(box_path, "a box", 0, p)
    message = str(info.value)
    for name in ("no-flux", "no-controlnet", "no-lora.safetensors"):
        assert name in message
    assert len(info.value.problems) == 3 and info.value.retryable is False


def test_no_controlnet_path_says_which_param_to_set(weights, box_path):
    flux, _ = weights
    p = tiny_params_of(MeshToBundleParams, flux)
    with pytest.raises(WeightsMissingError, match="controlnet_path"):
        mesh_to_bundle(box_path, "a box", 0, p)


def test_the_registry_serves_a_mesh_request_from_manifest_params(weights, box_path):
    from models.generate.registry import generate_bundle

    flux, controlnet = weights
    request = GenerationRequest(
        kind="mesh", prompt="a blue box", mesh_path=box_path, seed=0, tile=TEST_TILE,
        params={"steps": 4, "max_sequence_length": 160, "check_degenerate": False,
                "dtype": "float32", "controlnet_path": str(controlnet), "mode": "retexture"},
    )
    generated = generate_bundle("kiss3dgen-mesh", request, GeneratorContext(flux_path=str(flux)))
    assert generated.bundle.image.shape == (2 * TEST_TILE, 4 * TEST_TILE, 3)
    assert generated.match["keep_geometry"] is True


def test_the_registry_without_a_mesh_is_a_clear_input_error(weights):
    from models.generate.registry import generate_bundle

    request = GenerationRequest(kind="mesh", prompt="a box", tile=TEST_TILE)
    with pytest.raises(GeneratorInputError, match="mesh: PATH"):
        generate_bundle("kiss3dgen-mesh", request, GeneratorContext(flux_path=str(weights[0])))
