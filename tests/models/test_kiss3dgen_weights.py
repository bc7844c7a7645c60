"""ControlNet-Union and Redux folders in their released layouts, loaded from local paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.generate.kiss3dgen.controlnet import (
    control_mode_index,
    load_controlnet,
    tile_condition,
)
from models.generate.kiss3dgen.redux import load_redux, redux_image_tokens, with_image_tokens
from models.generate.kiss3dgen.tiny import (
    TINY_SIGLIP,
    TINY_TRANSFORMER,
    save_tiny_controlnet,
    save_tiny_redux,
)
from models.generate.kiss3dgen.weights import WeightsMissingError

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def controlnet_dir(tmp_path_factory) -> Path:
    return save_tiny_controlnet(tmp_path_factory.mktemp("w") / "FLUX.1-dev-Controlnet-Union")


@pytest.fixture(scope="module")
def redux_dir(tmp_path_factory) -> Path:
    return save_tiny_redux(tmp_path_factory.mktemp("w") / "FLUX.1-Redux-dev")


def test_the_controlnet_folder_has_the_instantx_layout_and_loads_as_a_union(controlnet_dir):
    assert (controlnet_dir / "config.json").is_file()
    assert (controlnet_dir / "diffusion_pytorch_model.safetensors").is_file()
    model = load_controlnet(controlnet_dir, torch.float32)
    assert model.union and not model.training
    assert control_mode_index(model, "tile") == 1


def test_the_redux_folder_has_the_flux_redux_layout_and_gives_t5_wide_image_tokens(redux_dir):
    assert (redux_dir / "model_index.json").is_file()
    for part in ("image_encoder", "feature_extractor", "image_embedder"):
        assert (redux_dir / part).is_dir()
    redux = load_redux(redux_dir, torch.float32)
    tokens = redux_image_tokens(redux, np.full((64, 64, 3), 200, np.uint8), torch.device("cpu"))
    patches = (TINY_SIGLIP["image_size"] // TINY_SIGLIP["patch_size"]) ** 2
    assert tokens.shape == (1, patches, TINY_TRANSFORMER["joint_attention_dim"])


def test_different_pictures_give_different_redux_tokens(redux_dir):
    redux = load_redux(redux_dir, torch.float32)
    grey = np.full((64, 64, 3), 200, np.uint8)
    red = grey.copy()
    red[16:48, 16:48] = (220, 20, 20)
    cpu = torch.device("cpu")
    a, b = redux_image_tokens(redux, grey, cpu), redux_image_tokens(redux, red, cpu)
    assert not torch.equal(a, b)


def test_image_tokens_are_appended_after_the_text_tokens_and_scaled():
    text, pooled = torch.ones(1, 5, 4), torch.ones(1, 3)
    tokens = torch.full((1, 2, 4), 2.0)
    embeds, pooled_out = with_image_tokens(text, pooled, tokens, 0.5, 0.25)
    assert embeds.shape == (1, 7, 4)
    assert torch.equal(embeds[:, :5], torch.full((1, 5, 4), 0.5))
    assert torch.equal(embeds[:, 5:], torch.ones(1, 2, 4))
    assert torch.equal(pooled_out, torch.full((1, 3), 0.25))


def test_a_missing_controlnet_or_redux_folder_names_its_path(tmp_path):
    with pytest.raises(WeightsMissingError, match="no-union"):
        load_controlnet(tmp_path / "no-union", torch.float32)
    (tmp_path / "redux").mkdir()
    (tmp_path / "redux" / "model_index.json").write_text("{}")
    with pytest.raises(WeightsMissingError, match="image_encoder"):
        load_redux(tmp_path / "redux", torch.float32)


def test_the_tile_condition_keeps_the_bundle_at_down_scale_1_and_blurs_it_above():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)
    np.testing.assert_array_equal(tile_condition(image, 1), image)
    blurred = tile_condition(image, 4)
    assert blurred.shape == image.shape
    assert blurred.astype(float).std() < image.astype(float).std()
