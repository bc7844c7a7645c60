"""The ``catalog`` flow: validate a manifest, record its requests, run the assets, summarise.

Reads top to bottom like the process: ingest -> run (bounded concurrency, in-process or on the
asset deployment's workers) -> summary artifact.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from sqlalchemy import select
from sqlalchemy.orm import Session

from flows.asset import run_assets_here
from storage.schema import Asset
from tasks.config import PipelineConfig
from tasks.ingest import IngestResult, ingest_manifest
from tasks.resources import engine_for
from tasks.summary import BatchSummary, summarise_batch


@task(name="ingest-manifest")
def ingest_task(manifest: str, config: PipelineConfig) -> IngestResult:
    return ingest_manifest(Path(manifest), config)


@task(name="summarise")
def summary_task(ingest: IngestResult, outcomes: dict[str, str], config: PipelineConfig,
                 seconds: float) -> BatchSummary:
    summary = summarise_batch(ingest, outcomes, config, seconds)
    create_table_artifact(
        key="catalog-summary",
        table=summary.table_rows(),
        description=summary.markdown_header(),
    )
    return summary


def batch_tag(batch_id: str) -> str:
    """The Prefect tag on the asset flow runs of a catalog batch."""
    return f"batch:{batch_id}"


def _shards(asset_ids: list[str], size: int) -> list[list[str]]:
    return [asset_ids[i : i + size] for i in range(0, len(asset_ids), size)]


def _run_on_deployment(
    shard: list[str], config: PipelineConfig, deployment: str, tags: list[str]
) -> dict[str, str]:
    """Run a shard on the deployment's work pool; outcomes come from the database, since the
    worker's flow-run result lives on another machine."""
    from prefect.deployments import run_deployment

    flow_run = run_deployment(
        name=deployment,
        parameters={"asset_ids": shard, "config": config.model_dump()},
        tags=tags,
        timeout=None,
    )
    completed = flow_run.state is not None and flow_run.state.is_completed()
    with Session(engine_for(config.database_url)) as session:
        states = dict(
            session.execute(select(Asset.id, Asset.state).where(Asset.id.in_(shard))).all()
        )
    outcomes = {}
    for asset_id in shard:
        state = states.get(asset_id)
        if state in ("succeeded", "failed"):
            outcomes[asset_id] = state
        else:
            outcomes[asset_id] = "skipped" if completed else "failed"
    return outcomes


@flow(name="catalog", log_prints=True)
def catalog_flow(
    manifest: str,
    config: PipelineConfig,
    concurrency: int = 2,
    shard_size: int = 1,
    deployment: str | None = None,
) -> BatchSummary:
    """Generate every asset of ``manifest``.

    ``deployment``: when set (a Prefect server is configured), shards run on that deployment's
    work pool with ``run_deployment``; otherwise in this process, ``concurrency`` at a time.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    ingest = ingest_task(manifest, config)
    logger.info(
        "manifest %s: %d assets (%d to run), %d rejected rows",
        manifest, len(ingest.asset_ids), len(ingest.to_run), len(ingest.rejected),
    )
    outcomes: dict[str, str] = {}
    shards = _shards(ingest.to_run, max(1, shard_size))
    tags = [batch_tag(ingest.batch_id)]
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        if deployment:
            futures = [
                pool.submit(_run_on_deployment, s, config, deployment, tags) for s in shards
            ]
        else:
            futures = [pool.submit(run_assets_here, s, config, tags) for s in shards]
        for future in futures:
            outcomes.update(future.result())
    return summary_task(ingest, outcomes, config, time.perf_counter() - started)


if __name__ == "__main__":
    example = PipelineConfig(
        database_url="sqlite:///foundry-data/foundry.db",
        store_url="file://./foundry-data/objects",
        library_path="foundry-data/library",
    )
    print(catalog_flow("examples/catalog.yaml", example).render_text())
