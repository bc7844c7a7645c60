"""Image-to-3D (``kiss3dgen-image``) on tiny random Flux, ControlNet-Union and Redux folders
loaded like real weights, with a small mesh library for the coarse bundle."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import trimesh

from models.generate.background import remove_background
from models.generate.base import GenerationRequest, GeneratorContext, GeneratorInputError
from models.generate.kiss3dgen import pipeline as kpipe
from models.generate.kiss3dgen.image_to_3d import (
    ImageToBundleParams,
    coarse_bundle_from_library,
    image_to_bundle,
)
from models.generate.kiss3dgen.pipeline import WeightsMissingError
from models.generate.kiss3dgen.tiny import (
    save_tiny_controlnet,
    save_tiny_flux,
    save_tiny_redux,
)
from tests.models.kiss3dgen_fixtures import TEST_TILE, tiny_params_of

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("weights")
    return {
        "flux_path": save_tiny_flux(root / "flux"),
        "controlnet_path": save_tiny_controlnet(root / "FLUX.1-dev-Controlnet-Union"),
        "redux_path": save_tiny_redux(root / "FLUX.1-Redux-dev"),
    }


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    import json

    from models.embed.text import get_text_embedder
    from models.library.index import build_library_index

    folder = tmp_path_factory.mktemp("library")
    trimesh.creation.icosphere(subdivisions=2, radius=0.5).export(folder / "ball.ply")
    trimesh.creation.box(extents=(1.6, 0.25, 0.25)).export(folder / "bar.stl")
    rows = [{"id": "ball", "path": "ball.ply", "caption": "a round ball"},
            {"id": "bar", "path": "bar.stl", "caption": "a long metal bar"}]
    (folder / "library.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_library_index(folder, embedder=get_text_embedder(), tile=64)
    return folder


@pytest.fixture(autouse=True)
def _fresh_cache():
    kpipe.clear_cache()
    yield
    kpipe.clear_cache()


def bar_photo(backdrop=(60, 140, 90)) -> np.ndarray:
    """A horizontal grey bar on a flat coloured backdrop (no alpha)."""
    image = np.empty((128, 128, 3), np.uint8)
    image[:] = backdrop
    image[58:72, 14:114] = 150
    return image


def params(weights, **overrides) -> ImageToBundleParams:
    return tiny_params_of(ImageToBundleParams, weights["flux_path"],
                          controlnet_path=weights["controlnet_path"],
                          redux_path=weights["redux_path"], reference_size=64, **overrides)


def coarse(library):
    from models.library.index import LibraryIndex

    return coarse_bundle_from_library(
        LibraryIndex.load(library), remove_background(bar_photo()), TEST_TILE
    )


def test_defaults_are_kiss3dgens_image_to_3d_settings():
    p = ImageToBundleParams()
    assert (p.strength, p.controlnet_conditioning_scale, p.control_guidance_end) == (
        0.95, 0.6, 0.65)
    assert (p.use_redux, p.redux_prompt_embeds_scale, p.control_mode) == (True, 1.0, "tile")


def test_the_coarse_bundle_is_the_library_match_of_the_segmented_object(library):
    bundle, record = coarse(library)
    assert record["id"] == "bar" and record["by"] == "image"
    assert bundle.tile == TEST_TILE and bundle.spec.distance == 4.2
    assert bundle.spec.extra["caption"] == "a long metal bar"


def test_an_image_gives_a_bundle_of_the_requested_size(weights, library):
    bundle, _ = coarse(library)
    out = image_to_bundle(remove_background(bar_photo()), bundle, "a bar", 0, params(weights))
    image = out.generated.bundle.image
    assert image.shape == (2 * TEST_TILE, 4 * TEST_TILE, 3) and image.dtype == np.uint8
    assert out.generated.bundle.spec.extra["redux"] is True
    assert out.reference.shape == (64, 64, 3)


def test_the_same_seed_gives_the_same_bundle(weights, library):
    bundle, _ = coarse(library)
    seg = remove_background(bar_photo())
    a = image_to_bundle(seg, bundle, "a bar", 5, params(weights)).generated.raw_image
    b = image_to_bundle(seg, bundle, "a bar", 5, params(weights)).generated.raw_image
    np.testing.assert_array_equal(a, b)


def test_the_redux_image_prompt_changes_the_bundle(weights, library):
    bundle, _ = coarse(library)
    seg = remove_background(bar_photo())
    p = params(weights)
    with_redux = image_to_bundle(seg, bundle, "a bar", 5, p).generated.raw_image
    scaled = image_to_bundle(seg, bundle, "a bar", 5,
                             replace(p, redux_prompt_embeds_scale=0.5)).generated.raw_image
    without = image_to_bundle(seg, bundle, "a bar", 5,
                              replace(p, use_redux=False)).generated.raw_image
    assert np.abs(with_redux.astype(int) - without).max() > 0
    assert np.abs(with_redux.astype(int) - scaled).max() > 0


def test_missing_weights_name_each_missing_path(library, tmp_path):
    bundle, _ = coarse(library)
    p = tiny_params_of(ImageToBundleParams, tmp_path / "no-flux",
                       controlnet_path=tmp_path / "no-controlnet",
                       redux_path=tmp_path / "no-redux")
    with pytest.raises(WeightsMissingError) as info:
        image_to_bundle(remove_background(bar_photo()), bundle, "a bar", 0, p)
    for name in ("no-flux", "no-controlnet", "no-redux"):
        assert name in str(info.value)


def test_no_redux_path_says_which_param_to_set(weights, library):
    bundle, _ = coarse(library)
    p = replace(params(weights), redux_path=None)
    with pytest.raises(WeightsMissingError, match="redux_path"):
        image_to_bundle(remove_background(bar_photo()), bundle, "a bar", 0, p)


def request_for(weights, image, **fields) -> GenerationRequest:
    manifest = {"steps": 4, "max_sequence_length": 160, "check_degenerate": False,
                "dtype": "float32", "reference_size": 64,
                "controlnet_path": str(weights["controlnet_path"]),
                "redux_path": str(weights["redux_path"])}
    return GenerationRequest(kind="image", image=image, seed=0, tile=TEST_TILE, params=manifest,
                             **fields)


def test_the_registry_serves_an_image_request_with_the_library_caption(weights, library):
    from models.generate.registry import generate_bundle

    context = GeneratorContext(flux_path=str(weights["flux_path"]), library_path=library)
    generated = generate_bundle("kiss3dgen-image", request_for(weights, bar_photo()), context)
    assert generated.bundle.image.shape == (2 * TEST_TILE, 4 * TEST_TILE, 3)
    assert generated.match["id"] == "bar"
    assert generated.bundle.spec.extra["caption"] == "a long metal bar"
    assert generated.metrics["library_similarity"] == pytest.approx(generated.match["similarity"])


def test_the_registry_without_weights_names_every_missing_path_before_any_work(tmp_path):
    from models.generate.registry import generate_bundle

    request = GenerationRequest(kind="image", image=bar_photo(), tile=TEST_TILE,
                                params={"controlnet_path": str(tmp_path / "cn"),
                                        "redux_path": str(tmp_path / "redux")})
    with pytest.raises(WeightsMissingError) as info:
        generate_bundle("kiss3dgen-image", request, GeneratorContext())
    assert len(info.value.problems) == 3  # flux (no path), controlnet, redux


def test_a_textured_background_is_a_clear_input_error(weights, library):
    from models.generate.registry import generate_bundle

    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    context = GeneratorContext(flux_path=str(weights["flux_path"]), library_path=library)
    with pytest.raises(GeneratorInputError, match="not a plain colour"):
        generate_bundle("kiss3dgen-image", request_for(weights, noise), context)


def test_the_library_generator_matches_the_segmented_object_on_a_grainy_backdrop(library):
    """Sensor grain (sigma 8 levels) defeats a fixed white/plain threshold (the raw picture
    matches the ball); the segmented object matches the bar."""
    from models.generate.registry import generate_bundle

    rng = np.random.default_rng(0)
    grainy = np.ones((128, 128, 3)) * (30, 30, 160) + rng.normal(0.0, 8.0, (128, 128, 3))
    photo = np.clip(np.round(grainy), 0, 255).astype(np.uint8)
    photo[58:72, 14:114] = 150
    request = GenerationRequest(kind="image", image=photo, tile=TEST_TILE)
    generated = generate_bundle("library", request, GeneratorContext(library_path=library))
    assert generated.match["id"] == "bar" and generated.match["by"] == "image"
