"""Captions for ``kiss3dgen-mesh`` enhance rows without a prompt, with tiny random Florence-2
and BLIP captioners saved by ``save_pretrained`` and loaded through the same code path as
released ones. A random model's caption is gibberish: these tests check the wiring (when the
model is used, that its caption prompts Flux, when it is not, and the errors), not the words."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.generate.base import GenerationRequest, GeneratorContext, GeneratorInputError
from models.generate.kiss3dgen import pipeline as kpipe
from models.generate.kiss3dgen.caption import (
    caption_image,
    front_view,
    get_caption_model,
    load_caption_model,
)
from models.generate.kiss3dgen.mesh_to_3d import MeshToBundleParams, mesh_to_bundle
from models.generate.kiss3dgen.params import Kiss3DGenParamsError
from models.generate.kiss3dgen.tiny import (
    save_tiny_blip_captioner,
    save_tiny_controlnet,
    save_tiny_florence2_captioner,
    save_tiny_flux,
    save_tiny_redux,
)
from models.generate.kiss3dgen.weights import WeightsMissingError
from tests.models.kiss3dgen_fixtures import (
    TEST_TILE,
    disc_bundle,
    tiny_params_of,
    write_coloured_box,
)

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("weights")
    return {"flux": save_tiny_flux(root / "flux", seed=0),
            "controlnet": save_tiny_controlnet(root / "controlnet", seed=0),
            "caption": save_tiny_blip_captioner(root / "blip-image-captioning", seed=0),
            "florence2": save_tiny_florence2_captioner(root / "Florence-2", seed=0),
            "redux": save_tiny_redux(root / "redux", seed=0)}


@pytest.fixture(scope="module")
def box_path(tmp_path_factory) -> Path:
    return write_coloured_box(tmp_path_factory.mktemp("mesh") / "box.glb")


@pytest.fixture(autouse=True)
def _fresh_cache():
    kpipe.clear_cache()
    yield
    kpipe.clear_cache()


def params(weights, **overrides) -> MeshToBundleParams:
    given = {"controlnet_path": weights["controlnet"], "caption_path": weights["caption"],
             **overrides}
    return tiny_params_of(MeshToBundleParams, weights["flux"], **given)


@pytest.mark.parametrize("architecture", ["caption", "florence2"])
def test_an_enhance_without_a_prompt_is_prompted_with_the_caption_of_its_front_view(
        weights, box_path, architecture):
    p = params(weights, caption_path=weights[architecture])
    out = mesh_to_bundle(box_path, None, 0, p)
    captioner = get_caption_model(weights[architecture], kpipe.resolve_device(p))
    assert captioner.model_type == {"caption": "blip", "florence2": "florence2"}[architecture]
    expected = caption_image(captioner, front_view(out.reference.image, TEST_TILE))
    extra = out.generated.bundle.spec.extra
    assert expected and (extra["caption"], extra["caption_source"]) == (expected, "model")


def test_the_captioned_bundle_is_the_bundle_of_that_caption_as_a_prompt(weights, box_path):
    captioned = mesh_to_bundle(box_path, None, 5, params(weights)).generated
    caption = captioned.bundle.spec.extra["caption"]
    prompted = mesh_to_bundle(box_path, caption, 5, params(weights)).generated
    np.testing.assert_array_equal(captioned.raw_image, prompted.raw_image)


def test_a_given_prompt_wins_and_the_captioning_model_is_never_loaded(weights, box_path,
                                                                      tmp_path):
    p = params(weights, caption_path=tmp_path / "no-captioner")  # would fail if loaded
    out = mesh_to_bundle(box_path, "a weathered crate", 0, p)
    extra = out.generated.bundle.spec.extra
    assert (extra["caption"], extra["caption_source"]) == ("a weathered crate", "prompt")


def test_without_a_captioning_model_an_unprompted_enhance_names_the_missing_path(
        weights, box_path, tmp_path):
    with pytest.raises(WeightsMissingError, match="no-captioner") as info:
        mesh_to_bundle(box_path, None, 0, params(weights, caption_path=tmp_path / "no-captioner"))
    assert info.value.retryable is False


def test_with_no_caption_path_at_all_the_error_says_what_to_set(weights, box_path):
    with pytest.raises(WeightsMissingError, match="FOUNDRY_CAPTION_PATH"):
        mesh_to_bundle(box_path, None, 0, params(weights, caption_path=None))


def test_missing_flux_and_captioner_are_named_in_one_error(box_path, tmp_path):
    p = tiny_params_of(MeshToBundleParams, tmp_path / "no-flux",
                       controlnet_path=tmp_path / "no-controlnet",
                       caption_path=tmp_path / "no-captioner")
    with pytest.raises(WeightsMissingError) as info:
        mesh_to_bundle(box_path, None, 0, p)
    for name in ("no-flux", "no-controlnet", "no-captioner"):
        assert name in str(info.value)


@pytest.mark.parametrize("mode", ["edit", "retexture"])
def test_an_edit_or_retexture_without_a_prompt_is_refused_not_captioned(weights, box_path,
                                                                        mode):
    with pytest.raises(ValueError, match="needs a text prompt"):
        mesh_to_bundle(box_path, None, 0, params(weights, mode=mode))


def test_a_folder_of_another_architecture_is_refused_naming_it(tmp_path):
    import torch

    folder = tmp_path / "not-a-captioner"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(WeightsMissingError, match="not-a-captioner.*'bert'"):
        load_caption_model(folder, torch.device("cpu"), torch.float32)


def test_the_caption_path_comes_from_the_context_through_the_registry(weights, box_path):
    from models.generate.registry import generate_bundle

    request = GenerationRequest(
        kind="mesh", prompt=None, mesh_path=box_path, seed=0, tile=TEST_TILE,
        params={"steps": 4, "max_sequence_length": 160, "check_degenerate": False,
                "dtype": "float32", "controlnet_path": str(weights["controlnet"])},
    )
    context = GeneratorContext(flux_path=str(weights["flux"]),
                               caption_path=str(weights["caption"]))
    generated = generate_bundle("kiss3dgen-mesh", request, context)
    assert generated.match["caption_source"] == "model" and generated.match["caption"]


def test_the_registry_refuses_an_unprompted_edit_as_an_input_error(weights, box_path):
    from models.generate.registry import generate_bundle

    request = GenerationRequest(kind="mesh", prompt=None, mesh_path=box_path, tile=TEST_TILE,
                                params={"mode": "edit"})
    with pytest.raises(GeneratorInputError, match="needs a text prompt"):
        generate_bundle("kiss3dgen-mesh", request, GeneratorContext(flux_path=str(weights["flux"])))


def test_caption_max_tokens_outside_1_512_is_rejected_by_name():
    with pytest.raises(Kiss3DGenParamsError, match="caption_max_tokens"):
        MeshToBundleParams.from_mapping({"caption_max_tokens": 0})


def test_a_manifest_enhance_row_may_leave_out_its_prompt_but_an_edit_row_may_not():
    from pydantic import ValidationError

    from intake.items import ManifestItem

    assert ManifestItem(mesh="box.glb").prompt is None
    with pytest.raises(ValidationError, match="needs a 'prompt' to edit"):
        ManifestItem(mesh="box.glb", params={"mode": "edit"})


def test_an_empty_caption_is_an_input_error_asking_for_a_prompt(weights, box_path, tmp_path):
    import shutil

    from models.generate.registry import generate_bundle

    # The tiny Florence-2 without its minimum length ends its caption at once (seed 0).
    folder = tmp_path / "Florence-2-terse"
    shutil.copytree(weights["florence2"], folder)
    config = json.loads((folder / "generation_config.json").read_text())
    config.pop("min_new_tokens")
    (folder / "generation_config.json").write_text(json.dumps(config))
    request = GenerationRequest(
        kind="mesh", prompt=None, mesh_path=box_path, seed=0, tile=TEST_TILE,
        params={"steps": 4, "max_sequence_length": 160, "check_degenerate": False,
                "dtype": "float32", "controlnet_path": str(weights["controlnet"]),
                "caption_path": str(folder)},
    )
    with pytest.raises(GeneratorInputError, match="empty caption.*give the row a prompt"):
        generate_bundle("kiss3dgen-mesh", request, GeneratorContext(flux_path=str(weights["flux"])))


def _image_request(weights, tmp_path, prompt: str | None, caption_path) -> GenerationRequest:
    picture = np.full((64, 64, 3), 255, np.uint8)
    picture[16:48, 20:44] = (200, 30, 30)
    coarse = disc_bundle().save(tmp_path / "coarse.png")
    return GenerationRequest(
        kind="image", image=picture, prompt=prompt, bundle_path=coarse, seed=0, tile=TEST_TILE,
        params={"steps": 2, "max_sequence_length": 160, "check_degenerate": False,
                "dtype": "float32", "reference_size": 64,
                "controlnet_path": str(weights["controlnet"]),
                "redux_path": str(weights["redux"]), "caption_path": str(caption_path)})


def test_an_image_without_a_prompt_is_captioned_by_the_model_when_one_is_set(weights,
                                                                             tmp_path):
    from models.generate.registry import generate_bundle

    request = _image_request(weights, tmp_path, None, weights["caption"])
    generated = generate_bundle("kiss3dgen-image", request,
                                GeneratorContext(flux_path=str(weights["flux"])))
    extra = generated.bundle.spec.extra
    assert extra["caption_source"] == "model" and extra["caption"]


def test_an_image_with_a_prompt_never_loads_the_captioning_model(weights, tmp_path):
    from models.generate.registry import generate_bundle

    request = _image_request(weights, tmp_path, "a red block", tmp_path / "no-captioner")
    generated = generate_bundle("kiss3dgen-image", request,
                                GeneratorContext(flux_path=str(weights["flux"])))
    extra = generated.bundle.spec.extra
    assert (extra["caption"], extra["caption_source"]) == ("a red block", "prompt")


def test_an_unprompted_image_with_a_missing_captioning_model_names_it(weights, tmp_path):
    from models.generate.registry import generate_bundle

    request = _image_request(weights, tmp_path, None, tmp_path / "no-captioner")
    with pytest.raises(WeightsMissingError, match="no-captioner"):
        generate_bundle("kiss3dgen-image", request,
                        GeneratorContext(flux_path=str(weights["flux"])))
