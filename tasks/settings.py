"""Configuration read from the environment (``FOUNDRY_*``), in exactly one place.

Everything else receives plain values from :func:`get_settings`; no other module reads
``os.environ`` for foundry3d settings. It lives under ``tasks/`` so that a worker's flows (which
may not import the ``foundry3d`` package) can build the database and store URLs from their own
environment (:func:`tasks.config.with_locations`) instead of receiving them as flow parameters;
``foundry3d.settings`` re-exports it for the CLI.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tasks.config import PipelineConfig


class Settings(BaseSettings):
    """All foundry3d settings; each field is ``FOUNDRY_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="FOUNDRY_", extra="ignore")

    data_dir: Path = Field(Path("./foundry-data"), description="Root of every embedded default.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default sqlite:///<data_dir>/foundry.db."
    )
    store_url: str | None = Field(
        None,
        description="Object store: file://PATH or s3://bucket/prefix?endpoint_url=...; "
        "default file://<data_dir>/objects.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Torch device.")
    rasteriser: Literal["auto", "cpu", "nvdiffrast"] = Field(
        "auto", description="Rasteriser backend; auto picks nvdiffrast when CUDA is present."
    )
    image_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Extra folders manifest images may live in (os.pathsep or comma separated).",
    )
    allow_url_fetch: bool = Field(False, description="Allow https:// image URLs in manifests.")
    url_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Hosts https:// image URLs may come from."
    )
    max_image_pixels: int = Field(64_000_000, description="Largest accepted manifest image.")
    library_path: Path | None = Field(
        None, description="Captioned mesh library folder; default <data_dir>/library."
    )
    flux_path: Path | None = Field(None, description="Local Flux diffusers folder or .safetensors.")
    lora_path: Path | None = Field(None, description="Kiss3DGen LoRA .safetensors file.")
    lora_scale: float = Field(1.0, description="LoRA adapter strength.")
    lrm_path: Path | None = Field(None, description="LRM Lightning checkpoint (.ckpt).")
    lrm_variant: str = Field("prm", description="LRM architecture: prm, instant-mesh-large/base.")
    prefect_mode: Literal["local", "server"] = Field(
        "local",
        description="local: flows run in-process; server: the catalog flow calls the asset "
        "deployment with run_deployment.",
    )
    asset_deployment: str = Field(
        "asset-shard/foundry3d-asset",
        description="Deployment (flow/name) the catalog calls in server mode.",
    )
    concurrency: int = Field(2, ge=1, description="Assets run at once by the catalog flow.")
    lease_seconds: int = Field(
        900, ge=5, description="How long a claim on an asset lasts (seconds); a running asset's "
        "worker renews it every third of that."
    )
    db_retry_seconds: float = Field(
        60.0, ge=0, description="How long pipeline database calls are retried while the "
        "database is unreachable before the asset fails (retryable)."
    )
    flux_memory: Literal["auto", "full", "offload", "sequential", "fp8", "nf4"] = Field(
        "auto",
        description="How Flux fits the GPU: full, offload (model CPU offload), sequential, fp8 "
        "(float8 weights), nf4 (4-bit, CUDA + bitsandbytes), or auto (from free GPU memory).",
    )
    controlnet_path: Path | None = Field(
        None,
        description="Flux ControlNet-Union folder (InstantX/FLUX.1-dev-Controlnet-Union layout) "
        "for kiss3dgen-mesh and kiss3dgen-image.",
    )
    redux_path: Path | None = Field(
        None, description="Flux Redux folder (FLUX.1-Redux-dev layout) for kiss3dgen-image."
    )
    matting_path: Path | None = Field(
        None,
        description="TorchScript matting model for kiss3dgen-image pictures without alpha or a "
        "plain backdrop.",
    )
    caption_path: Path | None = Field(
        None,
        description="Image-captioning model folder (Florence-2 or BLIP, save_pretrained layout) "
        "captioning kiss3dgen-mesh enhance rows that have no prompt.",
    )
    zero123_path: Path | None = Field(
        None,
        description="Zero123++ folder (sudo-ai/zero123plus-v1.2 layout): kiss3dgen-image draws "
        "its coarse bundle from its six views reconstructed by the LRM at FOUNDRY_LRM_PATH.",
    )
    tile: int = Field(512, ge=64, description="Bundle tile size for generated bundles.")
    worker: str | None = Field(
        None,
        description="Lease owner name of the workers this process starts; default host:pid of "
        "the process that runs each asset.",
    )

    @field_validator("image_roots", mode="before")
    @classmethod
    def _split_paths(cls, value: object) -> object:
        if isinstance(value, str):
            parts = value.replace(",", ":").split(":")
            return [Path(p) for p in parts if p.strip()]
        return value

    @field_validator("url_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [h.strip() for h in value.split(",") if h.strip()]
        return value

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'foundry.db').resolve()}"

    @property
    def resolved_store_url(self) -> str:
        if self.store_url:
            return self.store_url
        return (self.data_dir / "objects").resolve().as_uri()

    @property
    def resolved_library_path(self) -> Path:
        return self.library_path or self.data_dir / "library"

    def pipeline_config(self) -> PipelineConfig:
        """The plain values the flows and tasks receive (paths made absolute, defaults resolved).

        The one place settings become a :class:`tasks.config.PipelineConfig`. ``worker`` stays
        None unless ``FOUNDRY_WORKER`` names it: the config travels to other machines with
        ``run_deployment``, and a lease owner must name the process that runs the asset, which
        ``tasks.resources.worker_name`` does there.
        """
        return PipelineConfig(
            database_url=self.resolved_database_url,
            store_url=self.resolved_store_url,
            library_path=str(self.resolved_library_path.resolve()),
            device=self.device,
            rasteriser=self.rasteriser,
            tile=self.tile,
            lease_seconds=self.lease_seconds,
            db_retry_seconds=self.db_retry_seconds,
            flux_path=_optional_str(self.flux_path),
            lora_path=_optional_str(self.lora_path),
            lora_scale=self.lora_scale,
            lrm_path=_optional_str(self.lrm_path),
            lrm_variant=self.lrm_variant,
            worker=self.worker,
            image_roots=[str(p.resolve()) for p in self.image_roots],
            allow_url_fetch=self.allow_url_fetch,
            url_hosts=list(self.url_hosts),
            max_image_pixels=self.max_image_pixels,
            flux_memory=self.flux_memory,
            controlnet_path=_optional_str(self.controlnet_path),
            redux_path=_optional_str(self.redux_path),
            matting_path=_optional_str(self.matting_path),
            caption_path=_optional_str(self.caption_path),
            zero123_path=_optional_str(self.zero123_path),
        )


def _optional_str(path: Path | None) -> str | None:
    return None if path is None else str(path)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()


def with_locations(config: PipelineConfig) -> PipelineConfig:
    """``config`` with its database and store URLs, taken from this process's ``FOUNDRY_*``
    environment where it has none (a config that came as a flow parameter)."""
    if config.database_url is not None and config.store_url is not None:
        return config
    settings = get_settings()
    return config.model_copy(update={
        "database_url": config.database_url or settings.resolved_database_url,
        "store_url": config.store_url or settings.resolved_store_url,
    })
