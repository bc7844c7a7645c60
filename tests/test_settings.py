"""Settings -> PipelineConfig: the one conversion from the environment to what flows receive."""

from __future__ import annotations

from pathlib import Path

import pytest

from foundry3d.settings import Settings
from tasks.config import PipelineConfig


@pytest.fixture(autouse=True)
def _no_foundry_environment(monkeypatch):
    import os

    for name in [n for n in os.environ if n.startswith("FOUNDRY_")]:
        monkeypatch.delenv(name)


def test_pipeline_config_resolves_the_embedded_defaults_under_the_data_dir(tmp_path):
    config = Settings(data_dir=tmp_path).pipeline_config()
    assert isinstance(config, PipelineConfig)
    assert config.database_url == f"sqlite:///{(tmp_path / 'foundry.db').resolve()}"
    assert config.store_url == (tmp_path / "objects").resolve().as_uri()
    assert config.library_path == str((tmp_path / "library").resolve())


def test_pipeline_config_carries_the_environment_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("FOUNDRY_DATABASE_URL", "postgresql://db/foundry")
    monkeypatch.setenv("FOUNDRY_STORE_URL", "s3://bucket/prefix")
    monkeypatch.setenv("FOUNDRY_LRM_PATH", "/weights/prm.ckpt")
    monkeypatch.setenv("FOUNDRY_IMAGE_ROOTS", f"{tmp_path}/a,{tmp_path}/b")
    monkeypatch.setenv("FOUNDRY_URL_HOSTS", "example.org, cdn.example.org")
    monkeypatch.setenv("FOUNDRY_LEASE_SECONDS", "60")
    config = Settings().pipeline_config()
    assert (config.database_url, config.store_url) == ("postgresql://db/foundry", "s3://bucket/prefix")
    assert (config.lrm_path, config.flux_path) == ("/weights/prm.ckpt", None)
    assert config.image_roots == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert config.url_hosts == ["example.org", "cdn.example.org"]
    assert config.lease_seconds == 60


def test_the_worker_name_reaches_the_pipeline_config_only_when_set(monkeypatch):
    assert Settings().pipeline_config().worker is None  # each process names itself host:pid
    monkeypatch.setenv("FOUNDRY_WORKER", "gpu-7")
    assert Settings().pipeline_config().worker == "gpu-7"


def test_every_pipeline_config_field_is_set_from_the_settings(tmp_path):
    """A new PipelineConfig field must be wired here too, or it would silently keep its default."""
    settings = Settings(
        data_dir=tmp_path, device="cuda", rasteriser="cpu", tile=128, lease_seconds=30,
        flux_path=Path("/f"), lora_path=Path("/l"), lora_scale=0.5, lrm_path=Path("/m"),
        lrm_variant="instant-mesh-base", worker="w", image_roots=[tmp_path],
        allow_url_fetch=True, url_hosts=["h"], max_image_pixels=1000, db_retry_seconds=7,
        flux_memory="fp8",
        controlnet_path=Path("/c"), redux_path=Path("/r"), matting_path=Path("/t.pt"),
        caption_path=Path("/cap"), zero123_path=Path("/z123"),
    )
    config = settings.pipeline_config()
    defaults = PipelineConfig(database_url="d", store_url="s", library_path="l")
    unchanged = [
        name for name in PipelineConfig.model_fields
        if name not in ("database_url", "store_url", "library_path")
        and getattr(config, name) == getattr(defaults, name)
    ]
    assert unchanged == []


def test_an_unknown_flux_memory_mode_is_refused_naming_the_modes(monkeypatch):
    monkeypatch.setenv("FOUNDRY_FLUX_MEMORY", "tiny")
    with pytest.raises(ValueError, match="'auto', 'full', 'offload', 'sequential', 'fp8'"):
        Settings()


def test_the_conditioned_generators_weights_reach_the_pipeline_config(monkeypatch):
    monkeypatch.setenv("FOUNDRY_FLUX_MEMORY", "offload")
    monkeypatch.setenv("FOUNDRY_CONTROLNET_PATH", "/w/controlnet")
    monkeypatch.setenv("FOUNDRY_REDUX_PATH", "/w/redux")
    monkeypatch.setenv("FOUNDRY_MATTING_PATH", "/w/matting.pt")
    monkeypatch.setenv("FOUNDRY_CAPTION_PATH", "/w/florence-2")
    config = Settings().pipeline_config()
    assert (config.flux_memory, config.controlnet_path, config.redux_path, config.matting_path,
            config.caption_path) == ("offload", "/w/controlnet", "/w/redux", "/w/matting.pt",
                                     "/w/florence-2")
