"""LoRA fine-tuning on the tiny random Flux: the objective, files, checkpoints and resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.generate.kiss3dgen import pipeline as kpipe
from models.generate.kiss3dgen.pipeline import load_flux
from models.generate.kiss3dgen.tiny import save_tiny_flux
from models.generate.kiss3dgen.train import (
    LoraTrainConfig,
    TrainSample,
    build_dataset,
    read_dataset,
    read_lora_file,
    sample_sigmas,
    train_lora,
)
from tests.models.kiss3dgen_fixtures import (
    TEST_SEQ,
    TEST_TILE,
    disc_bundle,
    tiny_params,
    write_tiny_library,
)

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory) -> Path:
    return save_tiny_flux(tmp_path_factory.mktemp("flux") / "tiny-flux", seed=0)


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> list[TrainSample]:
    folder = tmp_path_factory.mktemp("bundles")
    out = []
    for k, (radius, colour) in enumerate([(0.3, (200, 60, 30)), (0.4, (30, 90, 210))]):
        path = disc_bundle(radius=radius, colour=colour).save(folder / f"disc{k}.png")
        out.append(TrainSample(image_path=path, caption=f"a flat disc number {k}"))
    return out


def config(**overrides) -> LoraTrainConfig:
    base = dict(rank=4, alpha=2.0, steps=4, lr=1e-2, tile=TEST_TILE,
                max_sequence_length=TEST_SEQ, checkpoint_every=0, dtype="float32", device="cpu")
    base.update(overrides)
    return LoraTrainConfig(**base)


def test_sigmoid_sigmas_are_logit_normal_and_inside_the_unit_interval():
    s = sample_sigmas(4000, "sigmoid", torch.Generator().manual_seed(0))
    assert float(s.min()) > 0 and float(s.max()) < 1
    assert abs(float(torch.logit(s).mean())) < 0.1 and abs(float(torch.logit(s).std()) - 1) < 0.1


def test_training_lowers_the_loss_on_a_fixed_batch(flux_dir, samples, tmp_path):
    result = train_lora(samples, flux_dir, tmp_path, config(steps=15))
    assert len(result.losses) == 15 and all(np.isfinite(result.losses))
    assert result.eval_loss_end < result.eval_loss_start


def test_the_trained_lora_loads_into_the_generator_with_its_rank_and_alpha(
    flux_dir, samples, tmp_path
):
    from peft.utils import get_peft_model_state_dict

    result = train_lora(samples, flux_dir, tmp_path, config(steps=2, rank=4, alpha=2.0))
    saved, meta = read_lora_file(result.lora_path)
    assert (meta["r"], meta["lora_alpha"]) == (4, 2.0)
    assert saved and all(k.startswith("transformer.") for k in saved)
    pipe = load_flux(tiny_params(flux_dir, lora_path=result.lora_path))
    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name=kpipe.ADAPTER_NAME)
    assert set(loaded) == {k.removeprefix("transformer.") for k in saved}
    for key, tensor in saved.items():
        torch.testing.assert_close(loaded[key.removeprefix("transformer.")], tensor,
                                   rtol=0, atol=0)
    cfg = pipe.transformer.peft_config[kpipe.ADAPTER_NAME]
    assert (cfg.r, cfg.lora_alpha) == (4, 2.0)
    assert {"to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj",
            "to_add_out"} <= set(cfg.target_modules)


def test_a_resumed_run_ends_where_an_uninterrupted_run_ends(flux_dir, samples, tmp_path):
    whole = train_lora(samples, flux_dir, tmp_path / "whole", config(steps=4))
    train_lora(samples, flux_dir, tmp_path / "split", config(steps=2))
    resumed = train_lora(samples, flux_dir, tmp_path / "split", config(steps=4), resume=True)
    np.testing.assert_allclose(resumed.losses, whole.losses, rtol=1e-5)
    a, _ = read_lora_file(whole.lora_path)
    b, _ = read_lora_file(resumed.lora_path)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)


def test_checkpoints_are_written_every_n_steps_and_only_the_newest_kept(
    flux_dir, samples, tmp_path
):
    train_lora(samples, flux_dir, tmp_path, config(steps=6, checkpoint_every=2,
                                                   keep_checkpoints=2))
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_0000004", "step_0000006"]


def test_progress_reports_every_step_with_its_loss(flux_dir, samples, tmp_path):
    seen = []
    result = train_lora(samples, flux_dir, tmp_path, config(steps=3),
                        progress=lambda step, total, loss: seen.append((step, total, loss)))
    assert [(s, t) for s, t, _ in seen] == [(1, 3), (2, 3), (3, 3)]
    assert [loss for _, _, loss in seen] == result.losses


def test_the_dataset_is_the_library_rendered_as_bundles_with_captions(tmp_path):
    library = write_tiny_library(tmp_path / "library")
    samples = build_dataset(library, tmp_path / "dataset", tile=TEST_TILE)
    assert [s.caption for s in samples] == ["a flat wooden box", "a tall metal can"]
    from models.bundle.spec import Bundle

    for s in samples:
        bundle = Bundle.load(s.image_path)
        assert bundle.tile == TEST_TILE and bundle.masks().any(axis=(1, 2)).all()
    assert read_dataset(tmp_path / "dataset") == samples


def test_a_library_without_an_index_is_refused_with_its_path(tmp_path):
    from models.library.format import LibraryError

    with pytest.raises(LibraryError, match="library.jsonl"):
        build_dataset(tmp_path, tmp_path / "dataset", tile=TEST_TILE)
