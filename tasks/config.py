"""The plain values a pipeline run needs, passed down from the settings as flow parameters.

The database and store URLs carry credentials, so they never become flow parameters: the two
fields are left out whenever a config is serialised (a flow run's stored parameters, a
``run_deployment`` call), and a flow that receives a config without them fills them in from its
own worker's environment with :func:`tasks.settings.with_locations`.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class PipelineConfig(BaseModel):
    """Everything tasks need to know about their environment; serialisable as flow parameters."""

    database_url: str | None = Field(
        None, exclude=True,
        description="SQLAlchemy URL of the application database (never serialised; None: "
        "this worker's FOUNDRY_DATABASE_URL).",
    )
    store_url: str | None = Field(
        None, exclude=True,
        description="Object store URL, file://... or s3://... (never serialised; None: this "
        "worker's FOUNDRY_STORE_URL).",
    )
    library_path: str = Field(description="Local folder of the captioned mesh library.")
    device: str = Field("cpu", description="Torch device for learned models and refinement.")
    rasteriser: str = Field("auto", description="Rasteriser backend name.")
    tile: int = Field(512, description="Default bundle tile size (pixels).")
    lease_seconds: int = Field(900, description="Claim lease length (seconds); renewed every "
                               "third of it while the asset runs.")
    db_retry_seconds: float = Field(
        60.0, description="How long database calls are retried while the database is down."
    )
    flux_path: str | None = Field(None, description="Flux pipeline folder or checkpoint.")
    lora_path: str | None = Field(None, description="Kiss3DGen LoRA file.")
    lora_scale: float = Field(1.0, description="LoRA strength.")
    lrm_path: str | None = Field(None, description="LRM checkpoint.")
    lrm_variant: str = Field("prm", description="LRM architecture name.")
    worker: str | None = Field(None, description="Lease owner name; default host:pid.")
    image_roots: list[str] = Field(default_factory=list, description="Extra image folders.")
    allow_url_fetch: bool = Field(False, description="Allow https:// images in manifests.")
    url_hosts: list[str] = Field(default_factory=list, description="Allowed image URL hosts.")
    max_image_pixels: int = Field(64_000_000, description="Largest accepted manifest image.")
    # Kiss3DGen's conditioned generators (kiss3dgen-mesh, kiss3dgen-image).
    flux_memory: str = Field("auto", description="How Flux fits the GPU (FOUNDRY_FLUX_MEMORY).")
    controlnet_path: str | None = Field(None, description="Flux ControlNet-Union folder.")
    redux_path: str | None = Field(None, description="Flux Redux folder.")
    matting_path: str | None = Field(None, description="TorchScript matting model file.")
    caption_path: str | None = Field(None, description="Image-captioning model folder.")
    zero123_path: str | None = Field(None, description="Zero123++ folder.")
