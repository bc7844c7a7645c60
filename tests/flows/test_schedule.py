"""Scheduled catalog generation for real: ``foundry3d serve`` and ``prefect deploy`` against a
Prefect server on loopback (its own PostgreSQL database, the suite's ``prefect_server``)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import sqlalchemy
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.sorting import FlowRunSort
from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.objects import open_store
from storage.schema import Asset
from tasks.config import PipelineConfig
from tasks.resources import engine_for
from tests.fixtures.prefect_server import PREFECT, ManagedProcess, watch
from tests.flows.conftest import cli_env, foundry3d_cmd, write_manifest

REPO = Path(__file__).resolve().parents[2]
REGISTER_TIMEOUT_S = 180.0
SCHEDULED_RUN_TIMEOUT_S = 540.0
"""The server's scheduler, the runner's poll, a flow-run process and one asset, on 2 busy cores."""
STOP_TIMEOUT_S = 20.0
"""Longest acceptable stop after Ctrl-C / SIGTERM (Prefect's own handler took ~40 s)."""


@pytest.fixture
def config(tmp_path: Path, tiny_library: Path) -> PipelineConfig:
    return PipelineConfig(
        database_url=f"sqlite:///{tmp_path / 'app.db'}",
        store_url=(tmp_path / "objects").as_uri(),
        library_path=str(tiny_library),
    )


def start_serve(request, prefect_server, config, tmp_path: Path, *args: str) -> ManagedProcess:
    """``foundry3d serve`` of a one-asset manifest against ``prefect_server``, started."""
    manifest = write_manifest(tmp_path, [{"prompt": "a wooden crate", "init": "library"}])
    watch(request.node, prefect_server)
    try:
        prefect_server.wait_ready()
    except RuntimeError as exc:  # the server did not come up
        pytest.fail(str(exc))
    env = cli_env(config, tmp_path, PREFECT_API_URL=prefect_server.api_url)
    serve = ManagedProcess("serve", foundry3d_cmd("serve", str(manifest), *args), env, tmp_path)
    watch(request.node, serve)
    serve.start()
    request.addfinalizer(serve.stop)
    return serve


def wait_for_deployment(prefect_server, serve: ManagedProcess, name: str):
    deadline = time.monotonic() + REGISTER_TIMEOUT_S
    with prefect_server.client() as client:
        while time.monotonic() < deadline:
            assert serve.running, "serve exited before registering its deployment"
            try:
                return client.read_deployment_by_name(name)
            except Exception:  # not registered yet
                time.sleep(1)
    pytest.fail(f"serve did not register {name} within {REGISTER_TIMEOUT_S:.0f} s")


def test_serve_without_a_prefect_api_refuses_in_one_line(config, tmp_path):
    manifest = write_manifest(tmp_path, [{"prompt": "a wooden crate"}])
    result = subprocess.run(
        foundry3d_cmd("serve", str(manifest), "--interval", "60"), env=cli_env(config, tmp_path),
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stdout
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and "serve needs a Prefect API" in lines[0], result.stdout


@pytest.mark.slow
@pytest.mark.postgres
def test_serve_registers_the_schedule_and_the_manifest_but_no_database_url(
    request, prefect_server, config, tmp_path
):
    serve = start_serve(request, prefect_server, config, tmp_path,
                        "--cron", "0 2 * * *", "--name", "nightly-test")
    deployment = wait_for_deployment(prefect_server, serve, "scheduled-catalog/nightly-test")
    assert [s.schedule.cron for s in deployment.schedules] == ["0 2 * * *"]
    assert deployment.parameters["manifest"] == str((tmp_path / "manifest.yaml").resolve())
    assert "config" not in deployment.parameters  # read from FOUNDRY_* where the run runs


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_stops_within_seconds_of_a_signal(request, prefect_server, config, tmp_path, signum):
    serve = start_serve(request, prefect_server, config, tmp_path,
                        "--cron", "0 2 * * *", "--name", f"stop-{signum.name}")
    wait_for_deployment(prefect_server, serve, f"scheduled-catalog/stop-{signum.name}")
    started = time.monotonic()
    serve.process.send_signal(signum)
    status = serve.process.wait(STOP_TIMEOUT_S)
    assert status == 0, serve.log_tail()
    assert time.monotonic() - started < STOP_TIMEOUT_S


@pytest.mark.slow
@pytest.mark.postgres
def test_a_served_schedule_runs_the_catalog_and_the_asset_reaches_the_database(
    request, prefect_server, config, tmp_path
):
    serve = start_serve(request, prefect_server, config, tmp_path,
                        "--interval", "30", "--name", "every-30-s")
    deployment = wait_for_deployment(prefect_server, serve, "scheduled-catalog/every-30-s")
    engine = engine_for(config.database_url)
    deadline = time.monotonic() + SCHEDULED_RUN_TIMEOUT_S
    completed: list = []
    with prefect_server.client() as client:
        while not completed and time.monotonic() < deadline:
            assert serve.running, "serve exited"
            time.sleep(2)
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC,  # explicit: see prefect_server.py
                limit=20,
            )
            completed = [run for run in runs if run.state and run.state.is_completed()]
    assert completed, (
        f"no scheduled run completed within {SCHEDULED_RUN_TIMEOUT_S:.0f} s (with SQLAlchemy "
        f"{sqlalchemy.__version__}: 2.1 breaks the Prefect server's scheduler; install the lock)"
    )
    with Session(engine) as session:
        assets = session.scalars(select(Asset)).all()
    assert [asset.state for asset in assets] == ["succeeded"]
    assert open_store(config.store_url).exists(assets[0].output_keys["asset.glb"])


@pytest.mark.slow
@pytest.mark.postgres
def test_prefect_deploy_from_prefect_yaml_creates_the_nightly_catalog(
    request, prefect_server, tmp_path
):
    watch(request.node, prefect_server)
    prefect_server.create_process_pool("cpu-pool")
    env = prefect_server.client_env(tmp_path / "deploy-home", FOUNDRY_CHECKOUT=str(REPO))
    deploy = subprocess.run(
        [str(PREFECT), "--no-prompt", "deploy", "--name", "nightly-catalog"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=300,
    )
    assert deploy.returncode == 0, deploy.stdout
    with prefect_server.client() as client:
        deployment = client.read_deployment_by_name("scheduled-catalog/nightly-catalog")
    assert [s.schedule.cron for s in deployment.schedules] == ["0 2 * * *"]
    assert deployment.work_pool_name == "cpu-pool"
    assert deployment.parameters["manifest"] == f"{REPO}/examples/catalog.yaml"
    listing = subprocess.run(
        [str(PREFECT), "deployment", "ls"], env={**env, "COLUMNS": "250"}, cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120,
    )
    assert listing.returncode == 0, listing.stdout
    assert "nightly-catalog" in listing.stdout
