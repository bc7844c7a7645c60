"""Turn the settings into the plain values the flows receive."""

from __future__ import annotations

from foundry3d.settings import Settings
from tasks.config import PipelineConfig


def pipeline_config(settings: Settings) -> PipelineConfig:
    """The :class:`PipelineConfig` for this process's settings (paths made absolute)."""
    return PipelineConfig(
        database_url=settings.resolved_database_url,
        store_url=settings.resolved_store_url,
        library_path=str(settings.resolved_library_path.resolve()),
        device=settings.device,
        rasteriser=settings.rasteriser,
        tile=settings.tile,
        lease_seconds=settings.lease_seconds,
        flux_path=str(settings.flux_path) if settings.flux_path else None,
        lora_path=str(settings.lora_path) if settings.lora_path else None,
        lora_scale=settings.lora_scale,
        lrm_path=str(settings.lrm_path) if settings.lrm_path else None,
        lrm_variant=settings.lrm_variant,
        image_roots=[str(p.resolve()) for p in settings.image_roots],
        allow_url_fetch=settings.allow_url_fetch,
        url_hosts=list(settings.url_hosts),
        max_image_pixels=settings.max_image_pixels,
    )
