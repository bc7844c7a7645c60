"""The ``retry`` flow: re-run failed assets (and those whose worker died holding the lease).

Each asset resumes at its first stage that is not done; ``reseed`` gives it a new seed, which
changes every stage's parameters from the bundle on, so all of them run again (the old seed is
kept in the asset's ``previous_seeds``, never in its parameters). ``overrides`` (``retry --set
refine_fine_steps=200``) change manifest parameters, checked like a manifest row's: the stages
that read them re-run, and the ones after them.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger
from sqlalchemy.orm import Session

from flows.asset import AssetFailed, asset_flow, subflow_settings
from storage import queries
from storage.db import DatabaseUnavailable, in_transaction, through_outage
from tasks.assets import retried_params
from tasks.config import PipelineConfig
from tasks.resources import engine_for
from tasks.settings import with_locations

SELECT_STEP = "selecting the assets to retry"
RESET_STEP = "putting the assets to retry back to pending"
"""What :class:`storage.db.DatabaseUnavailable` says the retry flow was doing."""


def select_retryable(
    config: PipelineConfig,
    *,
    batch_id: str | None = None,
    stage: str | None = None,
    error_class: str | None = None,
    older_than_s: float | None = None,
    asset_ids: list[str] | None = None,
    states: tuple[str, ...] = queries.RETRYABLE_STATES,
) -> list[str]:
    """Assets in ``states`` (failed and needs_review by default) matching the filters, plus
    running ones whose lease has expired.

    Retried through a database outage of up to ``config.db_retry_seconds`` (then
    :class:`storage.db.DatabaseUnavailable`)."""
    older_than = (
        datetime.now(UTC) - timedelta(seconds=older_than_s) if older_than_s else None
    )

    def select(session: Session) -> list[str]:
        failed = [asset for state in states for asset in queries.list_assets(
            session, state=state, batch_id=batch_id, stage=stage,
            error_class=error_class, older_than=older_than,
        )]
        stale = queries.list_expired_leases(session, batch_id=batch_id)
        return [a.id for a in failed] + [a.id for a in stale]

    ids = in_transaction(engine_for(config.database_url), select,
                         retry_seconds=config.db_retry_seconds, step=SELECT_STEP)
    if asset_ids:
        wanted = set(asset_ids)
        ids = [i for i in ids if i in wanted or any(i.startswith(w) for w in wanted)]
    return list(dict.fromkeys(ids))


@flow(name="retry")
def retry_flow(
    config: PipelineConfig,
    batch_id: str | None = None,
    stage: str | None = None,
    error_class: str | None = None,
    older_than_s: float | None = None,
    asset_ids: list[str] | None = None,
    reseed: bool = False,
    concurrency: int = 2,
    overrides: dict[str, Any] | None = None,
    states: tuple[str, ...] = queries.RETRYABLE_STATES,
) -> dict[str, str]:
    """Re-run the selected assets from their failing stage; returns asset id -> outcome.

    ``states``: which finished assets to select, ``failed`` and ``needs_review`` by default (a
    needs_review asset resumes after its last stage, so only what ``reseed`` or ``overrides``
    change runs again before it is judged anew).

    ``overrides``: flat manifest parameters to set on every selected asset (checked first; a
    bad one raises :class:`models.parameters.ParameterError` and nothing is retried).
    """
    logger = get_run_logger()
    config = with_locations(config)  # the URLs come from this worker, never as parameters
    selected = select_retryable(
        config, batch_id=batch_id, stage=stage, error_class=error_class,
        older_than_s=older_than_s, asset_ids=asset_ids, states=tuple(states),
    )
    logger.info("retrying %d assets", len(selected))
    new_params = through_outage(lambda: retried_params(config, selected, overrides),
                                retry_seconds=config.db_retry_seconds, step=SELECT_STEP)
    # Chosen once, so a reset retried after an outage gives each asset the same new seed.
    new_seeds = {asset_id: _new_seed() if reseed else None for asset_id in selected}

    def reset(session: Session) -> None:
        # Safe to run again: an asset already reset is no longer failed (or needs_review)
        # and is left alone.
        for asset_id in selected:
            queries.reset_for_retry(
                session, asset_id, new_seed=new_seeds[asset_id], params=new_params.get(asset_id)
            )

    in_transaction(engine_for(config.database_url), reset,
                   retry_seconds=config.db_retry_seconds, step=RESET_STEP)

    def one(asset_id: str) -> str:
        try:
            with subflow_settings():
                return asset_flow(asset_id, config)
        except (AssetFailed, DatabaseUnavailable):
            return "failed"

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        outcomes = dict(zip(selected, pool.map(one, selected), strict=True))
    return outcomes


def _new_seed() -> int:
    import secrets

    return secrets.randbelow(2**31 - 1)
