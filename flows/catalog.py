"""The ``catalog`` flow: validate a manifest, record its requests, run the assets, summarise.

Reads top to bottom like the process: ingest -> run (bounded concurrency, in-process or on the
asset deployment's workers) -> summary artifact -> close the batch (``finished``, or ``failed``
when the run raised, with its assets per state either way).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from flows.asset import run_assets_here
from storage import queries
from storage.db import get_engine, in_transaction
from tasks.config import PipelineConfig
from tasks.ingest import IngestResult, ingest_manifest
from tasks.settings import with_locations
from tasks.summary import BatchSummary, close_batch, summarise_batch


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


@task(name="close-batch")
def close_batch_task(
    batch_id: str, config: PipelineConfig, summary: BatchSummary | None, failure: str | None
) -> dict:
    """Mark the batch ended; what was stored as its summary comes back."""
    return close_batch(batch_id, config, summary, failure)


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
    states = in_transaction(get_engine(config.database_url),
                            lambda session: queries.asset_states(session, shard),
                            retry_seconds=config.db_retry_seconds,
                            step="reading how a shard's assets ended")
    outcomes = {}
    for asset_id in shard:
        state = states.get(asset_id)
        if state in queries.TERMINAL_STATES:
            outcomes[asset_id] = state
        else:
            outcomes[asset_id] = "skipped" if completed else "failed"
    return outcomes


def run_shards(
    ingest: IngestResult,
    config: PipelineConfig,
    concurrency: int,
    shard_size: int,
    deployment: str | None,
) -> dict[str, str]:
    """Run the batch's assets in shards, ``concurrency`` shards at a time; asset id -> outcome.

    Not a Prefect task: each shard is an asset flow run of its own (in this process or on the
    deployment's work pool), and a task around them would only nest their runs.
    """
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
    ``config`` is stored without its database and store URLs (they hold credentials); a config
    without them uses this worker's ``FOUNDRY_DATABASE_URL`` and ``FOUNDRY_STORE_URL``.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    config = with_locations(config)  # the URLs come from this worker, never as parameters
    ingest = ingest_task(manifest, config)
    logger.info(
        "manifest %s: %d assets (%d to run), %d rejected rows",
        manifest, len(ingest.asset_ids), len(ingest.to_run), len(ingest.rejected),
    )
    failure: str | None = None
    summary: BatchSummary | None = None
    try:
        outcomes = run_shards(ingest, config, concurrency, shard_size, deployment)
        summary = summary_task(ingest, outcomes, config, time.perf_counter() - started)
        return summary
    except BaseException as exc:
        failure = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        # A batch never stays `running`: it ends finished or failed, with its counts.
        close_batch_task(ingest.batch_id, config, summary, failure)


if __name__ == "__main__":
    example = PipelineConfig(
        database_url="sqlite:///foundry-data/foundry.db",
        store_url="file://./foundry-data/objects",
        library_path="foundry-data/library",
    )
    print(catalog_flow("examples/catalog.yaml", example).render_text())
