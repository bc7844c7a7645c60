"""Failures that happen to real workers: killed processes, overlapping runs, a store going down."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from storage import queries
from storage.objects import open_store
from storage.schema import Asset, StageRun
from tests.flows.conftest import FAST_PARAMS, cli_env, foundry3d_cmd, write_manifest

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]

LEASE_S = 8


def _engine(config):
    from tasks.resources import engine_for

    return engine_for(config.database_url)


def _wait_for_running_stage(config, stage: str, process: subprocess.Popen, timeout_s=240):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            out = process.stdout.read() if process.stdout else ""
            pytest.fail(f"the worker ended before reaching {stage}: {out[-3000:]}")
        with Session(_engine(config)) as session:
            run = session.scalars(
                select(StageRun).where(StageRun.stage == stage, StageRun.status == "running")
            ).first()
            if run is not None:
                return run.asset_id
        time.sleep(0.2)
    pytest.fail(f"no {stage} stage started within {timeout_s} s")


def _wait_for(condition, what: str, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout_s} s")
        time.sleep(0.1)


def _recorded_keys_exist_and_nothing_else(config, asset_id: str) -> None:
    store = open_store(config.store_url)
    with Session(_engine(config)) as session:
        recorded = queries.recorded_output_keys(session, asset_id)
    stored = set(store.list(f"assets/{asset_id}/"))
    assert recorded <= stored, f"recorded but missing: {recorded - stored}"
    assert stored <= recorded, f"orphans left behind: {stored - recorded}"


def test_a_worker_killed_mid_stage_is_completed_by_retry_after_its_lease_expires(
    pipeline_config, tmp_path, monkeypatch
):
    from flows.retry import retry_flow

    scratch_root = tmp_path / "tmp"  # the killed worker's and the retry's temporary folder
    scratch_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_root))
    slow_refine = {**FAST_PARAMS, "refine_coarse_steps": 600, "refine_coarse_resolution": 96}
    manifest = write_manifest(tmp_path, [{"prompt": "a round ball", "params": slow_refine}])
    worker = subprocess.Popen(
        foundry3d_cmd("run", str(manifest)),
        env=cli_env(pipeline_config, tmp_path, FOUNDRY_LEASE_SECONDS=str(LEASE_S),
                    TMPDIR=str(scratch_root)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        asset_id = _wait_for_running_stage(pipeline_config, "refine", worker)
        _wait_for(lambda: list(scratch_root.glob("foundry3d-refine-*")), "refine's scratch")
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    config = pipeline_config.model_copy(update={"lease_seconds": LEASE_S})

    assert retry_flow(config) == {}, "a live lease must not be retried"
    time.sleep(LEASE_S + 1)
    assert retry_flow(config) == {asset_id: "succeeded"}

    with Session(_engine(config)) as session:
        assert session.scalars(select(Asset)).all()[0].state == "succeeded"
        assert len(session.scalars(select(Asset)).all()) == 1
        runs = queries.stage_runs(session, asset_id)
    refine_runs = [(r.status, r.error_class) for r in runs if r.stage == "refine"]
    assert refine_runs == [("failed", "retryable:LostWorker"), ("succeeded", None)]
    assert [r.status for r in runs if r.stage == "bundle"] == ["succeeded"]  # not redone
    _recorded_keys_exist_and_nothing_else(config, asset_id)
    assert not list(scratch_root.glob("foundry3d-*")), "the retry removed the dead worker's scratch"


def test_two_catalog_runs_at_once_over_overlapping_manifests_make_each_asset_once(
    pipeline_config, tmp_path
):
    first = write_manifest(tmp_path, [{"prompt": "a wooden crate"}, {"prompt": "a soda can"}],
                           name="first.yaml")
    second = write_manifest(tmp_path, [{"prompt": "a soda can"}, {"prompt": "a rubber ball"}],
                            name="second.yaml")
    runs = [
        subprocess.Popen(
            foundry3d_cmd("run", str(manifest)),
            env=cli_env(pipeline_config, tmp_path),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for manifest in (first, second)
    ]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], "\n".join(o[-2000:] for o in outputs)

    with Session(_engine(pipeline_config)) as session:
        assets = session.scalars(select(Asset)).all()
        assert sorted(a.state for a in assets) == ["succeeded"] * 3
        for asset in assets:
            done = [r.stage for r in queries.stage_runs(session, asset.id)
                    if r.status == "succeeded"]
            assert sorted(done) == sorted(set(done)), f"{asset.id} produced twice: {done}"
            assert len(done) == 7


@pytest.mark.postgres
@pytest.mark.s3
def test_the_store_going_down_during_publish_fails_retryably_and_retry_succeeds(
    s3_server, new_postgres_database, tiny_library, tmp_path
):
    from flows.catalog import catalog_flow
    from flows.retry import retry_flow
    from storage.db import upgrade_database
    from tasks import progress
    from tasks.config import PipelineConfig

    config = PipelineConfig(
        database_url=new_postgres_database(migrated=True),
        store_url=s3_server.bucket_url(prefix=f"outage-{tmp_path.name}"),
        library_path=str(tiny_library),
    )
    upgrade_database(config.database_url)
    manifest = write_manifest(tmp_path, [{"prompt": "a soda can", "init": "library"}])

    def stop_store_at_publish(event: dict) -> None:
        if event["stage"] == "publish" and event["event"] == "start":
            s3_server.stop()

    if not s3_server.running:
        s3_server.start()
    unsubscribe = progress.subscribe(stop_store_at_publish)
    try:
        summary = catalog_flow(str(manifest), config)
    finally:
        unsubscribe()
        s3_server.start()
    assert summary.failed == 1
    asset_id = summary.assets[0]["asset_id"]
    with Session(_engine(config)) as session:
        asset = queries.get_asset(session, asset_id)
        assert (asset.state, asset.current_stage) == ("failed", "publish")
        assert asset.last_error_class == "retryable:StoreUnavailable"

    assert retry_flow(config) == {asset_id: "succeeded"}
    _recorded_keys_exist_and_nothing_else(config, asset_id)
