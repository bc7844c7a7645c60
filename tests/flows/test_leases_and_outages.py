"""Whole asset runs when a lease is lost mid-run or the database goes away for a while."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from storage import queries
from storage.schema import Asset
from tasks import progress
from tasks.config import PipelineConfig
from tests.flows.conftest import write_manifest

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]


def _engine(config: PipelineConfig):
    from tasks.resources import engine_for

    return engine_for(config.database_url)


def _on_event(stage: str, event: str, action, asset_id: str | None = None):
    """Subscribe ``action(event dict)`` to the first ``stage``/``event`` (of ``asset_id``)."""
    fired = threading.Event()

    def listener(payload: dict) -> None:
        if fired.is_set() or payload["stage"] != stage or payload["event"] != event:
            return
        if asset_id is not None and payload["asset_id"] != asset_id:
            return
        fired.set()
        action(payload)

    return progress.subscribe(listener), fired


def _sqlite_config(tmp_path, tiny_library, **changes) -> PipelineConfig:
    from storage.db import upgrade_database

    database_url = f"sqlite:///{tmp_path / 'app.db'}"
    upgrade_database(database_url)
    return PipelineConfig(database_url=database_url, store_url=(tmp_path / "objects").as_uri(),
                          library_path=str(tiny_library), lease_seconds=60, **changes)


def test_a_lease_lost_mid_run_skips_that_asset_and_the_batch_goes_on(tmp_path, tiny_library):
    from flows.catalog import catalog_flow

    config = _sqlite_config(tmp_path, tiny_library)
    manifest = write_manifest(tmp_path, [{"prompt": "a soda can"}, {"prompt": "a rubber ball"}])

    def steal(payload: dict) -> None:  # another worker claims it (this one looked frozen)
        with Session(_engine(config)) as session:
            session.execute(sa.update(Asset).where(Asset.id == payload["asset_id"]).values(
                lease_owner="thief", attempts=Asset.attempts + 1))
            session.commit()

    unsubscribe, fired = _on_event("init", "start", steal)
    try:
        summary = catalog_flow(str(manifest), config, concurrency=1)
    finally:
        unsubscribe()
    assert fired.is_set()
    outcomes = sorted(row["outcome"] for row in summary.assets)
    assert outcomes == ["lost", "succeeded"]
    lost = next(r["asset_id"] for r in summary.assets if r["outcome"] == "lost")
    with Session(_engine(config)) as session:
        asset = queries.get_asset(session, lost)
        assert (asset.state, asset.lease_owner) == ("running", "thief")  # the thief's now
        done = [r.stage for r in queries.stage_runs(session, lost) if r.status == "succeeded"]
    assert done == ["bundle"], "the lost worker recorded nothing after losing the lease"


@pytest.fixture
def postgres_config(new_postgres_database, postgres_url, tmp_path, tiny_library):
    """A migrated PostgreSQL database + a local store, and a switch that blocks its connections."""
    url = new_postgres_database(migrated=True)
    config = PipelineConfig(database_url=url, store_url=(tmp_path / "objects").as_uri(),
                            library_path=str(tiny_library), lease_seconds=60)
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT",
                             poolclass=sa.pool.NullPool)
    name = make_url(url).database

    def block(seconds: float) -> threading.Thread:
        """Refuse connections to the database and cut the open ones, for ``seconds``."""

        def outage() -> None:
            with admin.connect() as connection:
                connection.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
                connection.exec_driver_sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                )
            time.sleep(seconds)
            with admin.connect() as connection:
                connection.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

        thread = threading.Thread(target=outage)
        thread.start()
        return thread

    yield config, block
    admin.dispose()


@pytest.mark.postgres
def test_a_database_outage_shorter_than_the_window_is_ridden_out(postgres_config, tmp_path):
    from flows.catalog import catalog_flow

    config, block = postgres_config
    config = config.model_copy(update={"db_retry_seconds": 30})
    manifest = write_manifest(tmp_path, [{"prompt": "a soda can"}])
    outages: list[threading.Thread] = []
    unsubscribe, fired = _on_event("refine", "start", lambda _: outages.append(block(4.0)))
    try:
        summary = catalog_flow(str(manifest), config)
    finally:
        unsubscribe()
        for thread in outages:
            thread.join()
    assert fired.is_set()
    assert (summary.produced, summary.failed) == (1, 0)
    with Session(_engine(config)) as session:
        runs = queries.stage_runs(session, summary.assets[0]["asset_id"])
    assert [r.status for r in runs if r.status != "succeeded"] == [], "stage runs left open"


@pytest.mark.postgres
def test_a_database_outage_longer_than_the_window_fails_the_asset_retryably(
    postgres_config, tmp_path, caplog
):
    from flows.catalog import catalog_flow

    config, block = postgres_config
    config = config.model_copy(update={"db_retry_seconds": 1.5})
    manifest = write_manifest(tmp_path, [{"prompt": "a soda can"}])
    outages: list[threading.Thread] = []
    unsubscribe, fired = _on_event("init", "start", lambda _: outages.append(block(5.0)))
    try:
        summary = catalog_flow(str(manifest), config)
    finally:
        unsubscribe()
        for thread in outages:
            thread.join()
    assert fired.is_set()
    assert (summary.produced, summary.failed) == (0, 1)
    with Session(_engine(config)) as session:
        asset = queries.get_asset(session, summary.assets[0]["asset_id"])
        runs = queries.stage_runs(session, asset.id)
    assert (asset.state, asset.last_error_class) == ("failed", "retryable:DatabaseUnavailable")
    assert "\n" not in asset.last_error_message
    assert [r.status for r in runs if r.status == "running"] == []
    assert [r.status for r in runs if r.stage == "init"] == ["abandoned"]


def test_releasing_a_finished_asset_closes_its_open_stage_runs_as_abandoned(db_url):
    from storage.db import get_engine

    engine = get_engine(db_url)
    with Session(engine) as session:
        queries.insert_asset_if_new(
            session, asset_id="a1", kind="prompt", prompt="p", image_ref=None, image_sha256=None,
            bundle_ref=None, seed=0, variant=0, generator="library", init="sphere", params={},
            tags=[],
        )
        assert queries.claim_asset(session, "a1", "w", 60)
        queries.record_stage_start(session, "a1", "init", params_hash="h")
        assert queries.release_asset(session, "a1", "w", "succeeded",
                                     epoch=queries.lease_epoch(session, "a1"))
        session.commit()
        assert [r.status for r in queries.stage_runs(session, "a1")] == ["abandoned"]
