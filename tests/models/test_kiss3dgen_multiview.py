"""Zero123++ + LRM coarse bundles for ``kiss3dgen-image``, on a tiny random Zero123++ folder in
the ``sudo-ai/zero123plus-v1.2`` layout (every part loaded with ``from_pretrained``) and a tiny
LRM checkpoint. Random weights draw noise: these tests check shapes, determinism, that the
picture reaches the views, the wiring into the generator, and the errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from models.generate.base import GenerationRequest, GeneratorContext
from models.generate.kiss3dgen import pipeline as kpipe
from models.generate.kiss3dgen.image_to_3d import ImageToBundleParams
from models.generate.kiss3dgen.multiview import coarse_bundle_from_picture, lrm_mesh_from_views
from models.generate.kiss3dgen.tiny import (
    TINY_ZERO123_VIEW,
    save_tiny_controlnet,
    save_tiny_flux,
    save_tiny_redux,
    save_tiny_zero123plus,
)
from models.generate.kiss3dgen.weights import WeightsMissingError
from models.generate.kiss3dgen.zero123plus import (
    check_zero123plus_folder,
    generate_views,
    load_zero123plus,
)
from tests.models.kiss3dgen_fixtures import TEST_TILE

pytest.importorskip("diffusers")

CPU = torch.device("cpu")
STEPS = 3


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    from models.reconstruct.lrm.model import save_checkpoint
    from tests.models.test_lrm_model import tiny_model

    root = tmp_path_factory.mktemp("weights")
    return {
        "flux_path": save_tiny_flux(root / "flux"),
        "controlnet_path": save_tiny_controlnet(root / "controlnet"),
        "redux_path": save_tiny_redux(root / "redux"),
        "zero123_path": save_tiny_zero123plus(root / "zero123plus-v1.2"),
        "lrm_path": save_checkpoint(tiny_model(), root / "tiny-lrm.ckpt"),
    }


@pytest.fixture(scope="module")
def zero123(weights):
    return load_zero123plus(weights["zero123_path"], CPU, torch.float32)


@pytest.fixture(autouse=True)
def _fresh_cache():
    kpipe.clear_cache()
    yield
    kpipe.clear_cache()


def red_block(colour=(200, 30, 30)) -> np.ndarray:
    """A coloured square centred on white, as the picture reaches Zero123++."""
    image = np.full((64, 64, 3), 255, np.uint8)
    image[16:48, 20:44] = colour
    return image


def test_the_views_are_six_tiles_of_the_folders_view_size(zero123):
    views = generate_views(zero123, red_block(), 0, steps=STEPS)
    assert views.shape == (6, TINY_ZERO123_VIEW, TINY_ZERO123_VIEW, 3)
    assert views.dtype == np.uint8


def test_the_same_seed_gives_the_same_views_and_another_seed_others(zero123):
    a = generate_views(zero123, red_block(), 4, steps=STEPS)
    np.testing.assert_array_equal(a, generate_views(zero123, red_block(), 4, steps=STEPS))
    assert np.abs(a.astype(int) - generate_views(zero123, red_block(), 5, steps=STEPS)).max() > 0


def test_the_picture_reaches_the_views_through_reference_attention_alone(zero123):
    from dataclasses import replace

    no_embedding = replace(zero123, ramping=torch.zeros_like(zero123.ramping))
    red = generate_views(no_embedding, red_block(), 1, steps=STEPS, guidance=1.0)
    blue = generate_views(no_embedding, red_block((20, 40, 220)), 1, steps=STEPS, guidance=1.0)
    assert np.abs(red.astype(int) - blue).max() > 0


def test_the_picture_reaches_the_views_through_the_image_embedding(zero123, monkeypatch):
    from diffusers.models.attention_processor import AttnProcessor2_0

    from models.generate.kiss3dgen import zero123plus

    # Plain attention processors: only the ramped CLIP embedding carries the picture.
    monkeypatch.setattr(zero123plus, "install_reference_attention",
                        lambda unet: unet.set_attn_processor(AttnProcessor2_0()))
    red = generate_views(zero123, red_block(), 1, steps=STEPS, guidance=1.0)
    blue = generate_views(zero123, red_block((20, 40, 220)), 1, steps=STEPS, guidance=1.0)
    assert np.abs(red.astype(int) - blue).max() > 0


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(WeightsMissingError, match="no-zero123"):
        check_zero123plus_folder(tmp_path / "no-zero123")


def test_a_folder_without_ramping_coefficients_is_refused_naming_it(weights, tmp_path):
    copy = tmp_path / "zero123-copy"
    shutil.copytree(weights["zero123_path"], copy)
    index = json.loads((copy / "model_index.json").read_text())
    del index["ramping_coefficients"]
    (copy / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(WeightsMissingError, match="zero123-copy.*ramping_coefficients"):
        check_zero123plus_folder(copy)


def test_a_folder_missing_its_unet_is_refused_naming_the_part(weights, tmp_path):
    copy = tmp_path / "zero123-copy"
    shutil.copytree(weights["zero123_path"], copy)
    shutil.rmtree(copy / "unet")
    with pytest.raises(WeightsMissingError, match="'unet'"):
        check_zero123plus_folder(copy)


def test_the_lrm_turns_the_six_views_into_a_coloured_mesh(zero123, weights):
    views = generate_views(zero123, red_block(), 0, steps=STEPS)
    mesh = lrm_mesh_from_views(views, weights["lrm_path"], "tiny", "cpu")
    assert len(mesh.faces) > 0
    assert mesh.visual.vertex_colors.shape == (len(mesh.vertices), 4)


def test_the_coarse_bundle_has_the_requested_size(weights):
    out = coarse_bundle_from_picture(
        red_block(), 0, TEST_TILE, zero123_path=weights["zero123_path"],
        lrm_path=weights["lrm_path"], lrm_variant="tiny", device=CPU, steps=STEPS,
        guidance=4.0, distance=4.2)
    assert out.bundle.image.shape == (2 * TEST_TILE, 4 * TEST_TILE, 3)
    assert out.bundle.spec.extra["coarse"] == "zero123plus+lrm"
    assert out.views.shape[0] == 6


def _request(weights, **params) -> GenerationRequest:
    manifest = {"steps": 2, "max_sequence_length": 160, "check_degenerate": False,
                "dtype": "float32", "reference_size": 64, "zero123_steps": STEPS,
                "controlnet_path": str(weights["controlnet_path"]),
                "redux_path": str(weights["redux_path"]), **params}
    return GenerationRequest(kind="image", image=red_block(), prompt="a red block", seed=0,
                             tile=TEST_TILE, params=manifest)


def test_with_zero123_configured_the_generator_draws_its_coarse_bundle_from_it(weights):
    from models.generate.registry import generate_bundle

    context = GeneratorContext(flux_path=str(weights["flux_path"]),
                               zero123_path=str(weights["zero123_path"]),
                               lrm_path=str(weights["lrm_path"]), lrm_variant="tiny")
    generated = generate_bundle("kiss3dgen-image", _request(weights), context)
    assert generated.bundle.image.shape == (2 * TEST_TILE, 4 * TEST_TILE, 3)
    assert generated.match["by"] == "zero123plus+lrm"
    assert "library_similarity" not in generated.metrics


def test_missing_zero123_and_lrm_paths_are_named_in_one_error(weights, tmp_path):
    from models.generate.registry import generate_bundle

    context = GeneratorContext(flux_path=str(weights["flux_path"]),
                               zero123_path=str(tmp_path / "no-zero123"),
                               lrm_path=str(tmp_path / "no-lrm.ckpt"))
    with pytest.raises(WeightsMissingError) as info:
        generate_bundle("kiss3dgen-image", _request(weights), context)
    assert "no-zero123" in str(info.value) and "no-lrm.ckpt" in str(info.value)
    assert len(info.value.problems) == 2


def test_zero123_without_an_lrm_path_says_what_to_set(weights):
    from models.generate.registry import generate_bundle

    context = GeneratorContext(flux_path=str(weights["flux_path"]),
                               zero123_path=str(weights["zero123_path"]))
    with pytest.raises(WeightsMissingError, match="FOUNDRY_LRM_PATH"):
        generate_bundle("kiss3dgen-image", _request(weights), context)


def test_an_unknown_coarse_lrm_variant_is_rejected_by_name():
    from models.generate.kiss3dgen.params import Kiss3DGenParamsError

    with pytest.raises(Kiss3DGenParamsError, match="coarse_lrm_variant"):
        ImageToBundleParams.from_mapping({"coarse_lrm_variant": "huge"})
