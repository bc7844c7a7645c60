"""The ``asset`` flow: claim one asset, run its stages from the first not done, release it.

Runs in-process under the catalog flow, or on a GPU worker as the ``asset`` deployment (which
takes a shard of asset ids, so models loaded by the first asset serve the rest).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import prefect
import prefect.context
from prefect import flow, get_run_logger
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY
from sqlalchemy.orm import Session

from storage import queries
from storage.db import DatabaseUnavailable, in_transaction
from storage.redact import redact_text
from tasks.assets import AssetSnapshot, plan_stages, snapshot
from tasks.config import PipelineConfig
from tasks.errors import LeaseLost, error_class
from tasks.lease import Lease, holding
from tasks.resources import engine_for, store_for, worker_name
from tasks.settings import with_locations
from tasks.stages import (
    REVIEW_ERROR_CLASS,
    bundle_task,
    evaluate_task,
    export_task,
    init_task,
    publish_task,
    quality_verdict,
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


_log = logging.getLogger(__name__)


class AssetFailed(RuntimeError):
    """The asset's pipeline stopped at a stage; the database holds the error."""


def _claim(config: PipelineConfig, asset_id: str, owner: str) -> tuple[AssetSnapshot, Lease] | None:
    """Claim the asset and read it, in one transaction: its plain values and the lease, or None
    if not claimed."""

    def claim(session: Session) -> tuple[AssetSnapshot, Lease] | None:
        if not queries.claim_asset(session, asset_id, owner, config.lease_seconds):
            return None
        queries.abandon_running_stages(session, asset_id)
        lease = Lease(asset_id, owner, queries.lease_epoch(session, asset_id),
                      config.lease_seconds)
        return snapshot(queries.get_asset(session, asset_id)), lease

    return in_transaction(engine_for(config.database_url), claim,
                          retry_seconds=config.db_retry_seconds)


def _release(
    config: PipelineConfig,
    lease: Lease,
    state: str,
    exc: BaseException | None = None,
    review: str | None = None,
) -> bool:
    """End the claim in ``state``; False when another worker holds the asset by now.

    ``exc``: why it failed; ``review``: why it needs review (the verdict's reasons). Either is
    stored as the asset's last error.

    Retried for as long as the lease lasts (at least the retry window): until it runs out the
    asset is ours, and recording how it ended spares a retry of a finished asset.
    """

    if exc is not None:
        error, message = error_class(exc), _error_text(exc)
    elif review is not None:
        error, message = REVIEW_ERROR_CLASS, review
    else:
        error = message = None

    def release(session: Session) -> bool:
        return queries.release_asset(
            session, lease.asset_id, lease.owner, state,
            error_class=error, error_message=message, epoch=lease.epoch,
        )

    window = max(config.db_retry_seconds, float(config.lease_seconds))
    return in_transaction(engine_for(config.database_url), release, retry_seconds=window)


def _error_text(exc: BaseException) -> str:
    """The one-line error stored and shown for a failed asset (URLs redacted)."""
    return redact_text(str(exc).strip() or type(exc).__name__)[:2000]


def _clean_orphans(config: PipelineConfig, asset_id: str) -> int:
    """Delete objects under the asset's prefix that no recorded stage claims (a crashed run's)."""
    store = store_for(config.store_url)
    recorded = in_transaction(
        engine_for(config.database_url),
        lambda session: set(queries.recorded_output_keys(session, asset_id)),
        retry_seconds=config.db_retry_seconds,
    )
    orphans = [k for k in store.list(f"assets/{asset_id}/") if k not in recorded]
    for key in orphans:
        store.delete(key)
    return len(orphans)


@flow(name="asset", flow_run_name="asset-{asset_id}")
def asset_flow(asset_id: str, config: PipelineConfig) -> str:
    """Run one asset to the end. Returns ``succeeded``, ``needs_review`` when its metrics miss
    the quality verdict (:func:`tasks.stages.quality_verdict`; the reasons become its last
    error), ``skipped`` when it cannot be claimed (done already, or another worker holds it), or
    ``lost`` when another worker took it over mid-run (this worker froze past its lease);
    raises :class:`AssetFailed` on failure.

    While it runs, a heartbeat thread renews the lease every third of its length, and every
    stage record is fenced by it (:mod:`tasks.lease`).
    """
    logger = get_run_logger()
    config = with_locations(config)
    owner = config.worker or worker_name()
    claimed = _claim(config, asset_id, owner)
    if claimed is None:
        logger.info("asset %s: not claimable (done or held by another worker)", asset_id)
        return "skipped"
    asset, lease = claimed
    try:
        with holding(lease, config.database_url) as hold:
            if removed := _clean_orphans(config, asset_id):
                logger.info("asset %s: removed %d orphaned objects", asset_id, removed)
            plan = plan_stages(asset, config)  # once per run; a bad parameter fails here
            keys = bundle_task(asset, plan, config)
            for stage_task in (init_task, refine_task, texture_task, export_task, evaluate_task):
                hold.check()
                keys = {**keys, **stage_task(asset, plan, keys, config)}
            hold.check()
            publish_task(asset, plan, keys, config)
            verdict = quality_verdict(asset, plan, config)
            outcome = "succeeded" if verdict.passed else "needs_review"
            hold.stop_heartbeat()  # before the release, so no renewal races it
            released = _release(config, lease, outcome,
                                review=None if verdict.passed else verdict.text())
    except LeaseLost:
        released = False
    except Exception as exc:
        try:
            _release(config, lease, "failed", exc)
        except DatabaseUnavailable:
            pass  # the lease runs out and `retry` picks the asset up
        raise AssetFailed(
            f"asset {asset_id} failed: {error_class(exc)}: {_error_text(exc)}"
        ) from None
    if not released:
        logger.warning("asset %s: lease lost to another worker; its results are not kept "
                       "from this run", asset_id)
        return "lost"
    if outcome == "needs_review":
        logger.warning("asset %s %s", asset_id, verdict.text())
    return outcome


def run_assets_here(
    asset_ids: list[str], config: PipelineConfig, tags: list[str] | None = None
) -> dict[str, str]:
    """Run assets one after another in this process (sharing its loaded models); returns
    asset id -> ``succeeded`` / ``needs_review`` / ``skipped`` / ``lost`` / ``failed``.

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
        except DatabaseUnavailable as exc:  # could not even claim it: the batch goes on
            _log.warning("asset %s: not run: %s", asset_id, exc)
            outcomes[asset_id] = "failed"
    return outcomes


@flow(name="asset-shard")
def asset_shard_flow(asset_ids: list[str], config: PipelineConfig) -> dict[str, str]:
    """The deployed entry point: a shard of assets run in one worker process."""
    return run_assets_here(asset_ids, config)
