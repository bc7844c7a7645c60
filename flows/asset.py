"""The ``asset`` flow: claim one asset, run its stages from the first not done, release it.

Runs in-process under the catalog flow, or on a GPU worker as the ``asset`` deployment (which
takes a shard of asset ids, so models loaded by the first asset serve the rest).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import prefect
import prefect.context
from prefect import flow, get_run_logger
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY
from sqlalchemy.orm import Session

from storage import queries
from tasks.assets import AssetSnapshot, plan_stages, snapshot
from tasks.config import PipelineConfig
from tasks.errors import LeaseLost, error_class
from tasks.resources import engine_for, store_for, worker_name
from tasks.stages import (
    bundle_task,
    evaluate_task,
    export_task,
    init_task,
    publish_task,
    refine_task,
    texture_task,
)


@contextmanager
def subflow_settings() -> Iterator[None]:
    """Settings for asset flows run inside another flow's process (catalog, retry, shard).

    Prefect 3.8.8 joins each flow run's heartbeat thread at exit, which sleeps in 1 s steps:
    about 1 s of pure waiting per asset. Such a run shares its parent's process, whose own
    heartbeat already reports a crash, and a lost asset is caught by its lease; so these runs
    go without heartbeats. The derived settings are built once per base settings object
    (building a Prefect ``Settings`` costs ~50 ms, a tenth of an asset's orchestration).
    """
    global _subflow_settings
    context = prefect.context.get_settings_context()
    base, derived = _subflow_settings
    if base is not context.settings:
        base = context.settings
        derived = base.copy_with_update(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
        _subflow_settings = (base, derived)
    with prefect.context.SettingsContext(profile=context.profile, settings=derived):
        yield


_subflow_settings: tuple = (None, None)
"""The last ``(base settings, derived subflow settings)`` pair, replaced as one tuple."""


class AssetFailed(RuntimeError):
    """The asset's pipeline stopped at a stage; the database holds the error."""


def _claim(config: PipelineConfig, asset_id: str, owner: str) -> AssetSnapshot | None:
    """Claim the asset and read it, in one session: its plain values, or None if not claimed."""
    with Session(engine_for(config.database_url)) as session:
        claimed = queries.claim_asset(session, asset_id, owner, config.lease_seconds)
        asset = None
        if claimed:
            queries.abandon_running_stages(session, asset_id)
            asset = snapshot(queries.get_asset(session, asset_id))
        session.commit()
    return asset


def _renew(config: PipelineConfig, asset_id: str, owner: str) -> None:
    with Session(engine_for(config.database_url)) as session:
        held = queries.renew_lease(session, asset_id, owner, config.lease_seconds)
        session.commit()
    if not held:
        raise LeaseLost(f"asset {asset_id}: lease lost to another worker")


def _release(
    config: PipelineConfig,
    asset_id: str,
    owner: str,
    state: str,
    exc: BaseException | None = None,
) -> None:
    with Session(engine_for(config.database_url)) as session:
        queries.release_asset(
            session,
            asset_id,
            owner,
            state,
            error_class=error_class(exc) if exc else None,
            error_message=(str(exc) or type(exc).__name__)[:2000] if exc else None,
        )
        session.commit()


def _clean_orphans(config: PipelineConfig, asset_id: str) -> int:
    """Delete objects under the asset's prefix that no recorded stage claims (a crashed run's)."""
    store = store_for(config.store_url)
    with Session(engine_for(config.database_url)) as session:
        recorded = set(queries.recorded_output_keys(session, asset_id))
    orphans = [k for k in store.list(f"assets/{asset_id}/") if k not in recorded]
    for key in orphans:
        store.delete(key)
    return len(orphans)


@flow(name="asset", flow_run_name="asset-{asset_id}")
def asset_flow(asset_id: str, config: PipelineConfig) -> str:
    """Run one asset to the end. Returns ``succeeded``, or ``skipped`` when it cannot be claimed
    (done already, or another worker holds it); raises :class:`AssetFailed` on failure."""
    logger = get_run_logger()
    owner = config.worker or worker_name()
    asset = _claim(config, asset_id, owner)
    if asset is None:
        logger.info("asset %s: not claimable (done or held by another worker)", asset_id)
        return "skipped"
    try:
        if removed := _clean_orphans(config, asset_id):
            logger.info("asset %s: removed %d orphaned objects", asset_id, removed)
        plan = plan_stages(asset, config)  # once per run; a bad parameter fails here, permanently
        keys = bundle_task(asset, plan, config)
        for stage_task in (init_task, refine_task, texture_task, export_task, evaluate_task):
            _renew(config, asset_id, owner)
            keys = {**keys, **stage_task(asset, plan, keys, config)}
        _renew(config, asset_id, owner)
        publish_task(asset, plan, keys, config)
    except LeaseLost:
        raise
    except Exception as exc:
        _release(config, asset_id, owner, "failed", exc)
        raise AssetFailed(f"asset {asset_id} failed: {error_class(exc)}: {exc}") from exc
    _release(config, asset_id, owner, "succeeded")
    return "succeeded"


def run_assets_here(
    asset_ids: list[str], config: PipelineConfig, tags: list[str] | None = None
) -> dict[str, str]:
    """Run assets one after another in this process (sharing its loaded models); returns
    asset id -> ``succeeded`` / ``skipped`` / ``failed``.

    Called from a flow's own thread, each asset is a subflow of that flow; called from a
    worker thread (the catalog's bounded concurrency), each is a flow run of its own, which
    costs Prefect ~0.05 s less than a subflow (no tracking task run). ``tags`` go on every
    asset flow run (the catalog tags them with its batch, to find them in the Prefect UI).
    """
    outcomes: dict[str, str] = {}
    for asset_id in asset_ids:
        try:
            with subflow_settings(), prefect.tags(*(tags or [])):
                outcomes[asset_id] = asset_flow(asset_id, config)
        except AssetFailed:
            outcomes[asset_id] = "failed"
    return outcomes


@flow(name="asset-shard")
def asset_shard_flow(asset_ids: list[str], config: PipelineConfig) -> dict[str, str]:
    """The deployed entry point: a shard of assets run in one worker process."""
    return run_assets_here(asset_ids, config)
