"""The kiss3dgen generator on a tiny random Flux saved to disk and loaded like real weights."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from models.bundle.spec import Bundle, BundleSpec
from models.generate.kiss3dgen import pipeline as kpipe
from models.generate.kiss3dgen.generate import (
    DegenerateBundleError,
    apply_masks,
    check_degenerate,
    clean_mask,
    denoise,
    generate_bundles,
    generate_for_request,
)
from models.generate.kiss3dgen.params import Kiss3DGenParams, Kiss3DGenParamsError, check_inputs
from models.generate.kiss3dgen.pipeline import WeightsMissingError, get_pipeline, load_flux
from models.generate.kiss3dgen.prompts import BUNDLE_SENTENCE, bundle_prompts
from models.generate.kiss3dgen.tiny import save_tiny_flux
from models.generate.kiss3dgen.train import add_lora, read_lora_file, save_lora
from tests.models.kiss3dgen_fixtures import TEST_TILE, disc_bundle, tiny_params

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory) -> Path:
    return save_tiny_flux(tmp_path_factory.mktemp("flux") / "tiny-flux", seed=0)


@pytest.fixture(scope="module")
def random_lora(flux_dir, tmp_path_factory) -> Path:
    """A LoRA with random A and B (so it changes the output), rank 4, alpha 2."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(7)
    transformer = FluxTransformer2DModel.from_pretrained(flux_dir / "transformer")
    add_lora(transformer, rank=4, alpha=2.0, init_lora_weights=False)
    with torch.no_grad():  # a strong update, so its effect survives the tiny VAE decoder
        for name, p in transformer.named_parameters():
            if "lora_B" in name:
                p.mul_(20.0)
    return save_lora(transformer, tmp_path_factory.mktemp("lora") / "random_lora.safetensors")


@pytest.fixture(autouse=True)
def _fresh_cache():
    kpipe.clear_cache()
    yield
    kpipe.clear_cache()


# --------------------------------------------------------------------------- params, prompts


def test_check_inputs_rejects_a_bundle_that_is_not_two_to_one_and_names_the_sizes():
    with pytest.raises(Kiss3DGenParamsError, match="1024 x 1024"):
        check_inputs(Kiss3DGenParams(width=1024, height=1024))


def test_check_inputs_rejects_an_unknown_scheduler_by_name():
    with pytest.raises(Kiss3DGenParamsError, match="'ddim'"):
        check_inputs(Kiss3DGenParams(scheduler="ddim"))


def test_defaults_are_kiss3dgens_2048_by_1024_20_steps_guidance_3_5_euler():
    p = Kiss3DGenParams()
    assert (p.width, p.height, p.tile, p.steps, p.guidance, p.scheduler) == (
        2048, 1024, 512, 20, 3.5, "euler")
    assert p.max_sequence_length == 512


def test_params_from_a_manifest_mapping_override_defaults_and_reject_unknown_keys(tmp_path):
    p = Kiss3DGenParams.from_mapping({"steps": 4, "scheduler": "heun"}, flux_path=str(tmp_path))
    assert (p.steps, p.scheduler, p.flux_path) == (4, "heun", tmp_path)
    with pytest.raises(Kiss3DGenParamsError, match="stepz"):
        Kiss3DGenParams.from_mapping({"stepz": 4})


def test_clip_prompt_is_the_fixed_sentence_and_t5_prompt_appends_the_caption():
    clip, t5 = bundle_prompts(["a red mug", "  a chair "])
    assert clip == [BUNDLE_SENTENCE, BUNDLE_SENTENCE]
    assert BUNDLE_SENTENCE == "A grid of 2x4 multi-view image, elevation 5. White background."
    assert t5 == [BUNDLE_SENTENCE + " a red mug", BUNDLE_SENTENCE + " a chair"]


# --------------------------------------------------------------------------- masks, degenerate


def test_clean_mask_drops_small_islands_and_fills_small_holes_but_keeps_large_holes():
    mask = np.zeros((64, 64), bool)
    mask[8:56, 8:56] = True
    mask[30:32, 30:32] = False  # 4 px hole: noise
    mask[12:24, 12:24] = False  # 144 px hole: a real opening (> 0.002 * 4096 px)
    mask[1, 1] = True  # 1 px island
    cleaned = clean_mask(mask, min_island_fraction=0.002, max_hole_fraction=0.002)
    assert not cleaned[1, 1]
    assert cleaned[30:32, 30:32].all()
    assert not cleaned[12:24, 12:24].any()
    assert cleaned[40:56, 40:56].all()


def test_applied_masks_are_what_the_bundle_spec_rule_reads_back():
    bundle = disc_bundle(tile=64)
    image = bundle.image.copy()
    t = 64
    image[t + 2, 2] = (128, 128, 255)  # a 1 px island in the normal row of view 0
    image[t + 32, 32] = (255, 255, 255)  # a 1 px hole in the middle of the disc
    raw = Bundle(image=image, spec=BundleSpec(tile=t)).masks()
    cleaned = np.stack([clean_mask(m) for m in raw])
    out = Bundle(image=apply_masks(image, cleaned), spec=BundleSpec(tile=t))
    np.testing.assert_array_equal(out.masks(), cleaned)
    assert not out.masks()[0, 2, 2] and out.masks()[0, 32, 32]


def test_an_all_white_bundle_is_degenerate_and_retryable():
    white = np.full((TEST_TILE * 2, TEST_TILE * 4, 3), 255, np.uint8)
    with pytest.raises(DegenerateBundleError, match="view 0 has an empty foreground") as info:
        check_degenerate(white)
    assert info.value.retryable is True


def test_a_bundle_with_one_empty_view_is_degenerate():
    image = disc_bundle().image.copy()
    image[TEST_TILE:, 2 * TEST_TILE : 3 * TEST_TILE] = 255  # wipe view 2's normal tile
    with pytest.raises(DegenerateBundleError, match="view 2"):
        check_degenerate(image)


def test_a_square_image_is_degenerate_for_its_layout():
    with pytest.raises(DegenerateBundleError, match="wrong layout"):
        check_degenerate(np.full((64, 64, 3), 255, np.uint8))


def test_an_object_bundle_passes_the_degenerate_check():
    check_degenerate(disc_bundle().image)


# --------------------------------------------------------------------------- weights


def test_a_missing_flux_folder_raises_weights_missing_naming_the_path(tmp_path):
    missing = tmp_path / "no-such-flux"
    with pytest.raises(WeightsMissingError, match="no-such-flux") as info:
        generate_bundles(["a mug"], [0], tiny_params(missing))
    assert isinstance(info.value, FileNotFoundError)
    assert "model_index.json" in str(info.value) and info.value.retryable is False


def test_a_folder_that_is_not_a_flux_pipeline_raises_weights_missing(tmp_path):
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(WeightsMissingError, match="missing sub-folders"):
        load_flux(tiny_params(tmp_path))


def test_no_flux_path_at_all_says_which_setting_to_set():
    with pytest.raises(WeightsMissingError, match="FOUNDRY_FLUX_PATH"):
        load_flux(tiny_params(None))


def test_a_missing_lora_file_raises_weights_missing_naming_it(flux_dir, tmp_path):
    lora = tmp_path / "rgb_normal.safetensors"
    with pytest.raises(WeightsMissingError, match="rgb_normal.safetensors"):
        load_flux(tiny_params(flux_dir, lora_path=lora))


def test_a_lora_that_does_not_fit_the_transformer_raises_weights_missing(flux_dir, tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"unet.foo.lora_A.weight": torch.zeros(2, 2)}, str(bad))
    with pytest.raises(WeightsMissingError, match="bad.safetensors"):
        load_flux(tiny_params(flux_dir, lora_path=bad))


def test_a_single_safetensors_transformer_loads_with_the_rest_from_its_folder(flux_dir, tmp_path):
    import shutil

    from safetensors.torch import save_file

    base = tmp_path / "base"
    shutil.copytree(flux_dir, base)
    from diffusers import FluxTransformer2DModel

    transformer = FluxTransformer2DModel.from_pretrained(flux_dir / "transformer")
    single = base / "flux1-tiny.safetensors"
    save_file({k: v.contiguous() for k, v in transformer.state_dict().items()}, str(single))
    for f in (base / "transformer").glob("*.safetensors"):
        f.unlink()  # the folder supplies only the transformer config now
    params = tiny_params(flux_dir)
    from_folder = generate_bundles(["a red mug"], [3], params)[0].raw_image
    from_file = generate_bundles(["a red mug"], [3], replace(params, flux_path=single))[0]
    np.testing.assert_array_equal(from_file.raw_image, from_folder)


# --------------------------------------------------------------------------- generation


def test_generator_returns_a_bundle_of_the_requested_size_with_the_kiss3dgen_sidecar(flux_dir):
    (out,) = generate_bundles(["a red mug"], [0], tiny_params(flux_dir))
    assert out.bundle.image.shape == (2 * TEST_TILE, 4 * TEST_TILE, 3)
    assert out.bundle.image.dtype == np.uint8
    spec = out.bundle.spec
    assert (spec.tile, spec.distance, spec.producer) == (TEST_TILE, 4.2, "kiss3dgen")
    assert spec.extra["seed"] == 0 and spec.extra["caption"] == "a red mug"
    assert out.masks.shape == (4, TEST_TILE, TEST_TILE)
    np.testing.assert_array_equal(out.bundle.masks(), out.masks)


def test_the_same_seed_gives_the_same_image(flux_dir):
    params = tiny_params(flux_dir)
    a = generate_bundles(["a red mug"], [0], params)[0]
    b = generate_bundles(["a red mug"], [0], params)[0]
    np.testing.assert_array_equal(a.raw_image, b.raw_image)


def test_a_different_seed_gives_a_different_image(flux_dir):
    a, b = generate_bundles(["a red mug", "a red mug"], [0, 1], tiny_params(flux_dir))
    assert np.abs(a.raw_image.astype(int) - b.raw_image).max() > 10


def test_a_different_caption_gives_a_different_image(flux_dir):
    a, b = generate_bundles(["a red mug", "a wooden chair"], [5, 5], tiny_params(flux_dir))
    assert np.abs(a.raw_image.astype(int) - b.raw_image).max() > 0


def test_a_seed_gives_the_same_image_alone_or_inside_a_batch(flux_dir):
    params = tiny_params(flux_dir, batch_size=3)
    batch = generate_bundles(["a chair", "a red mug", "a lamp"], [9, 4, 2], params)
    alone = generate_bundles(["a red mug"], [4], params)[0]
    assert np.abs(batch[1].raw_image.astype(int) - alone.raw_image).max() <= 2


def test_euler_sampling_is_the_flux_pipelines_own_loop(flux_dir):
    params = tiny_params(flux_dir)
    pipe = get_pipeline(params)
    clip, t5 = bundle_prompts(["a red mug"])
    ours = denoise(pipe, clip, t5, [11], params)[0]
    ref = pipe(
        prompt=clip,
        prompt_2=t5,
        height=params.height,
        width=params.width,
        num_inference_steps=params.steps,
        guidance_scale=params.guidance,
        generator=[torch.Generator().manual_seed(11)],
        max_sequence_length=params.max_sequence_length,
        output_type="np",
    ).images[0]
    np.testing.assert_array_equal(ours, np.clip(np.round(ref * 255), 0, 255).astype(np.uint8))


def test_heun_sampling_runs_and_differs_from_euler(flux_dir):
    params = tiny_params(flux_dir)
    euler = generate_bundles(["a red mug"], [0], params)[0]
    heun = generate_bundles(["a red mug"], [0], replace(params, scheduler="heun"))[0]
    assert heun.raw_image.shape == euler.raw_image.shape
    assert np.abs(heun.raw_image.astype(int) - euler.raw_image).max() > 0


def test_a_lora_changes_the_output_and_strength_zero_restores_the_base(flux_dir, random_lora):
    params = tiny_params(flux_dir)
    base = generate_bundles(["a red mug"], [0], params)[0].raw_image
    with_lora = replace(params, lora_path=random_lora)
    full = generate_bundles(["a red mug"], [0], with_lora)[0].raw_image
    off = generate_bundles(["a red mug"], [0], replace(with_lora, lora_scale=0.0))[0].raw_image
    assert not np.array_equal(full, base)
    np.testing.assert_array_equal(off, base)


def test_a_saved_lora_loads_back_with_the_same_tensors_rank_and_alpha(flux_dir, random_lora):
    from peft.utils import get_peft_model_state_dict

    pipe = load_flux(tiny_params(flux_dir, lora_path=random_lora))
    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name=kpipe.ADAPTER_NAME)
    saved, config = read_lora_file(random_lora)
    saved = {k.removeprefix("transformer."): v for k, v in saved.items()}
    assert set(loaded) == set(saved) and saved
    for key, tensor in saved.items():
        torch.testing.assert_close(loaded[key], tensor, rtol=0, atol=0)
    peft_config = pipe.transformer.peft_config[kpipe.ADAPTER_NAME]
    assert (peft_config.r, peft_config.lora_alpha) == (4, 2.0)
    assert (config["r"], config["lora_alpha"]) == (4, 2.0)


def test_the_model_cache_loads_once_and_reloads_when_the_weights_change(flux_dir):
    params = tiny_params(flux_dir)
    first = get_pipeline(params)
    assert get_pipeline(replace(params, steps=5, lora_scale=0.5)) is first
    config = flux_dir / "transformer" / "config.json"
    st = config.stat()
    os.utime(config, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        assert get_pipeline(params) is not first
    finally:
        os.utime(config, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_the_registry_entry_serves_a_text_request_with_manifest_params(flux_dir):
    from models.generate.base import GenerationRequest, GeneratorContext
    from models.generate.registry import generate_bundle

    request = GenerationRequest(
        kind="text",
        prompt="a red mug",
        seed=0,
        tile=TEST_TILE,
        params={"steps": 2, "max_sequence_length": 160, "check_degenerate": False,
                "dtype": "float32"},
    )
    context = GeneratorContext(device="cpu", flux_path=str(flux_dir))
    direct = generate_bundles(["a red mug"], [0], tiny_params(flux_dir))[0]
    generated = generate_bundle("kiss3dgen", request, context)
    np.testing.assert_array_equal(generated.bundle.image, direct.bundle.image)
    assert generated.bundle.spec.producer == "kiss3dgen"
    assert generate_for_request(request, context).bundle.spec.distance == 4.2


def test_the_registry_entry_without_weights_fails_permanently_naming_the_setting():
    from models.generate.base import GenerationRequest, GeneratorContext
    from models.generate.registry import generate_bundle

    request = GenerationRequest(kind="text", prompt="a red mug", tile=TEST_TILE)
    with pytest.raises(WeightsMissingError, match="flux_path"):
        generate_bundle("kiss3dgen", request, GeneratorContext(device="cpu"))


def test_garbage_output_with_the_check_on_raises_degenerate_with_every_result(flux_dir):
    """Random weights decode to noise: every pixel decodes as foreground, no background."""
    params = tiny_params(flux_dir, check_degenerate=True)
    with pytest.raises(DegenerateBundleError) as info:
        generate_bundles(["a red mug", "a lamp"], [0, 1], params)
    assert info.value.retryable is True
    assert len(info.value.results) == 2 and info.value.indices
