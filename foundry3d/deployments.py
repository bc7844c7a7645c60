"""Deployment entry points that read the settings of the machine they run on.

Flows take a :class:`tasks.config.PipelineConfig`; a scheduled deployment has no caller to
build one, so these thin flows build it from the worker's ``FOUNDRY_*`` environment. The
database and store URLs (credentials) never become flow parameters: they are left out of every
serialised config, and each worker reads its own (:func:`tasks.settings.with_locations`).
"""

from __future__ import annotations

from prefect import flow

from flows.catalog import catalog_flow
from foundry3d.settings import get_settings


@flow(name="scheduled-catalog")
def scheduled_catalog(manifest: str, concurrency: int | None = None, shard_size: int = 1) -> str:
    """Run ``manifest`` with this worker's settings; in server mode assets go to the GPU pool.

    Ends Failed (so that Prefect's notifications fire) when an asset failed or needs review or
    a row was rejected, as ``foundry3d run`` exits 1; the summary artifact lists them either
    way.
    """
    settings = get_settings()
    deployment = settings.asset_deployment if settings.prefect_mode == "server" else None
    summary = catalog_flow(
        manifest,
        settings.pipeline_config(),
        concurrency=concurrency or settings.concurrency,
        shard_size=shard_size,
        deployment=deployment,
    )
    if summary.failed or summary.needs_review or summary.rejected:
        raise CatalogIncomplete(
            f"{summary.failed} assets failed, {summary.needs_review} need review and "
            f"{summary.rejected} manifest rows were rejected; retry the failed ones with "
            f"`foundry3d retry --batch {summary.batch_id}`"
        )
    return summary.render_text()


class CatalogIncomplete(RuntimeError):
    """A scheduled catalog ran to the end but left failed assets or rejected rows."""
