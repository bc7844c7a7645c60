"""Whole asset runs when a lease is lost mid-run or the database goes away for a while."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

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
    # The lost asset is counted as what it is now: held by the other worker's lease.
    outcomes = sorted(row["outcome"] for row in summary.assets)
    assert outcomes == ["held by another run", "succeeded"]
    assert (summary.produced, summary.held, summary.skipped) == (1, 1, 0)
    lost = next(r["asset_id"] for r in summary.assets if r["kind"] == "held")
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
        """Refuse connections to the database and cut the open ones, for ``seconds`` or until
        the returned thread's ``end`` event is set; returns once the database refuses them."""
        down, end = threading.Event(), threading.Event()

        def outage() -> None:
            with admin.connect() as connection:
                connection.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
                connection.exec_driver_sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                )
            down.set()
            end.wait(seconds)
            with admin.connect() as connection:
                connection.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

        thread = threading.Thread(target=outage)
        thread.end = end
        thread.start()
        down.wait()
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


# --- the catalog's own steps and the retry flow through an outage -----------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def retries():
    """The retry warnings of ``storage.db`` (on its own logger: Prefect's flow runs set up
    logging again, which drops pytest's capture handler)."""
    handler = _Records()
    logger = logging.getLogger("storage.db")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def _outage_logged(retries: _Records, step: str) -> bool:
    """Whether a database call retried while ``step`` (so the outage did hit that step)."""
    return any("database unreachable" in m and step in m for m in retries.messages)


def _count(config: PipelineConfig, table: str) -> int:
    with _engine(config).connect() as connection:
        return connection.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one()


@pytest.mark.postgres
def test_an_outage_during_ingest_within_the_window_is_ridden_out_and_each_asset_made_once(
    postgres_config, tmp_path, retries
):
    from flows.catalog import catalog_flow
    from tasks.ingest import INGEST_STEP

    config, block = postgres_config
    config = config.model_copy(update={"db_retry_seconds": 30})
    manifest = write_manifest(tmp_path, [{"prompt": "a soda can"}, {"prompt": "a rubber ball"}])
    outage = block(4.0)  # down before the flow starts: its first database call is ingest's
    try:
        summary = catalog_flow(str(manifest), config)
    finally:
        outage.join()
    assert _outage_logged(retries, INGEST_STEP)
    assert (summary.produced, summary.failed) == (2, 0)
    assert (_count(config, "batches"), _count(config, "batch_items"),
            _count(config, "assets")) == (1, 2, 2)
    with Session(_engine(config)) as session:
        for row in summary.assets:
            done = [r.stage for r in queries.stage_runs(session, row["asset_id"])
                    if r.status == "succeeded"]
            assert len(done) == len(set(done)), f"a stage of {row['asset_id']} ran twice"
        assert queries.get_batch(session, summary.batch_id).status == "finished"


def test_recording_a_batch_again_after_a_lost_commit_reply_adds_nothing(db_url):
    from storage.db import get_engine, in_transaction
    from tasks.ingest import record_batch

    asset = dict(asset_id="a1", kind="prompt", prompt="p", seed=0, generator="library",
                 init="sphere", params={}, tags=[])
    items = [{"line": 1, "item_id": None, "asset_id": "a1", "status": "accepted"},
             {"line": 2, "status": "rejected", "reason": "no prompt"}]
    engine = get_engine(db_url)

    def record(session: Session) -> bool:
        return record_batch(session, "b1", "m.yaml", None, [asset], items)

    assert in_transaction(engine, record) is True
    assert in_transaction(engine, record) is False  # the retry of a try that was written
    with engine.connect() as connection:
        counts = [connection.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar_one()
                  for t in ("batches", "batch_items", "assets")]
    assert counts == [1, 2, 1]


@pytest.mark.postgres
def test_the_summary_and_the_batch_close_ride_out_an_outage_within_the_window(
    postgres_config, tmp_path, retries
):
    from flows.asset import run_assets_here
    from tasks.ingest import ingest_manifest
    from tasks.summary import CLOSE_STEP, SUMMARY_STEP, close_batch, summarise_batch

    config, block = postgres_config
    config = config.model_copy(update={"db_retry_seconds": 30})
    manifest = write_manifest(tmp_path, [{"prompt": "a soda can"}, {"no": "request"}])
    ingest = ingest_manifest(manifest, config)
    outcomes = run_assets_here(ingest.to_run, config)
    outage = block(3.0)
    try:
        summary = summarise_batch(ingest, outcomes, config, seconds=1.0)
    finally:
        outage.join()
    outage = block(3.0)
    try:
        record = close_batch(ingest.batch_id, config, summary)
    finally:
        outage.join()
    assert _outage_logged(retries, SUMMARY_STEP) and _outage_logged(retries, CLOSE_STEP)
    assert (summary.produced, summary.failed, summary.rejected) == (1, 0, 1)
    with Session(_engine(config)) as session:
        batch = queries.get_batch(session, ingest.batch_id)
    assert batch.status == "finished"
    assert batch.summary == record
    assert (record["produced"], record["states"]["succeeded"], record["rejected"]) == (1, 1, 1)


def _failed_asset(config: PipelineConfig, tmp_path) -> str:
    """An ingested asset marked failed (retryable), as a crashed stage would leave it."""
    from tasks.ingest import ingest_manifest

    ingest = ingest_manifest(write_manifest(tmp_path, [{"prompt": "a soda can"}]), config)
    (asset_id,) = ingest.asset_ids
    with Session(_engine(config)) as session:
        assert queries.claim_asset(session, asset_id, "w", 60)
        assert queries.release_asset(session, asset_id, "w", "failed",
                                     error_class="retryable:Boom", error_message="boom",
                                     epoch=queries.lease_epoch(session, asset_id))
        session.commit()
    return asset_id


@pytest.mark.postgres
def test_an_outage_during_retry_selection_within_the_window_is_ridden_out(
    postgres_config, tmp_path, retries
):
    from flows.retry import SELECT_STEP, retry_flow

    config, block = postgres_config
    config = config.model_copy(update={"db_retry_seconds": 30})
    asset_id = _failed_asset(config, tmp_path)
    outage = block(3.0)
    try:
        outcomes = retry_flow(config)
    finally:
        outage.join()
    assert _outage_logged(retries, SELECT_STEP)
    assert outcomes == {asset_id: "succeeded"}


@pytest.mark.postgres
def test_an_outage_longer_than_the_window_stops_retry_selection_with_nothing_reset(
    postgres_config, tmp_path
):
    from flows.retry import SELECT_STEP, retry_flow
    from storage.db import DatabaseUnavailable

    config, block = postgres_config
    config = config.model_copy(update={"db_retry_seconds": 1.0})
    asset_id = _failed_asset(config, tmp_path)
    outage = block(4.0)
    try:
        with pytest.raises(DatabaseUnavailable) as raised:
            retry_flow(config)
    finally:
        outage.join()
    assert raised.value.step == SELECT_STEP
    assert f"while {SELECT_STEP}" in str(raised.value)
    with Session(_engine(config)) as session:
        assert queries.get_asset(session, asset_id).state == "failed"


@pytest.mark.postgres
def test_an_outage_longer_than_the_window_at_ingest_records_nothing_and_a_rerun_completes(
    postgres_config, tmp_path
):
    from flows.catalog import catalog_flow
    from storage.db import DatabaseUnavailable
    from tasks.ingest import INGEST_STEP

    config, block = postgres_config
    manifest = write_manifest(tmp_path, [{"prompt": "a soda can"}])
    outage = block(4.0)
    try:
        with pytest.raises(DatabaseUnavailable) as raised:
            catalog_flow(str(manifest), config.model_copy(update={"db_retry_seconds": 1.0}))
    finally:
        outage.join()
    assert raised.value.step == INGEST_STEP
    assert (_count(config, "batches"), _count(config, "assets")) == (0, 0)
    summary = catalog_flow(str(manifest), config)
    assert (summary.produced, summary.failed) == (1, 0)


@pytest.mark.postgres
def test_an_outage_longer_than_the_window_mid_run_ends_foundry3d_run_in_one_line_then_a_rerun_completes(  # noqa: E501
    postgres_config, tmp_path
):
    import subprocess

    from tests.flows.conftest import cli_env, foundry3d_cmd

    config, block = postgres_config
    manifest = write_manifest(tmp_path, [{"prompt": "a soda can"}])
    env = cli_env(config, tmp_path, FOUNDRY_DB_RETRY_SECONDS="1", FOUNDRY_LEASE_SECONDS="5")
    log = tmp_path / "run.log"
    with open(log, "w") as out:
        process = subprocess.Popen(foundry3d_cmd("run", str(manifest)), env=env, cwd=tmp_path,
                                   stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while _count(config, "stage_runs") == 0:  # down once its asset has started
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            outage = block(120.0)  # ended as soon as the run has ended
            try:
                status = process.wait(timeout=300)
                ended_while_down = outage.is_alive()
            finally:
                outage.end.set()
                outage.join()
        finally:
            if process.poll() is None:
                process.kill()
    output = log.read_text()
    assert ended_while_down, output
    assert status == 1, output
    errors = [line for line in output.splitlines() if "error:" in line]
    assert len(errors) == 1, output
    assert "database unreachable" in errors[0] and "foundry3d run" in errors[0], output
    assert "Traceback" not in output
    with Session(_engine(config)) as session:
        (batch,) = session.scalars(sa.select(queries.Batch)).all()
        (asset,) = session.scalars(sa.select(Asset)).all()
        assert (batch.status, asset.state != "succeeded") == ("running", True)
    rerun = subprocess.run(foundry3d_cmd("run", str(manifest)), env=env, cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stdout
    with Session(_engine(config)) as session:
        assert queries.get_asset(session, asset.id).state == "succeeded"


@pytest.mark.postgres
def test_a_job_submitted_during_an_outage_longer_than_the_window_is_answered_503_then_accepted(
    postgres_config, tmp_path
):
    from tests.api.conftest import manifest_yaml, server_env, start_server, stop_server

    config, block = postgres_config
    env = server_env(config.database_url, config.store_url, Path(config.library_path), tmp_path)
    env["FOUNDRY_DB_RETRY_SECONDS"] = "1"
    server = start_server(env, tmp_path)
    manifest = manifest_yaml([{"prompt": "a soda can"}])
    try:
        outage = block(120.0)
        try:
            refused = server.request("POST", "/v1/jobs", manifest,
                                     content_type="application/x-yaml")
        finally:
            outage.end.set()
            outage.join()
        accepted = server.request("POST", "/v1/jobs", manifest, content_type="application/x-yaml")
    finally:
        stop_server(server)
    assert refused.status == 503, refused.body
    assert refused.json()["error"]["code"] == "unavailable"
    assert "database unreachable" in refused.json()["error"]["message"]
    assert "Traceback" not in server.log()
    assert accepted.status == 202, accepted.body
    assert _count(config, "batches") == 1
