"""The distributed path for real: a Prefect server with its own PostgreSQL database, a process
work pool with a worker, the asset flow deployed to it, and ``foundry3d run`` in server mode
handing the catalog's assets to that deployment."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.sorting import FlowRunSort
from sqlalchemy import select
from sqlalchemy.orm import Session

from storage import queries
from storage.objects import open_store
from storage.schema import Asset
from tasks.config import PipelineConfig
from tasks.resources import engine_for
from tests.fixtures.prefect_server import deploy_flow
from tests.flows.conftest import cli_env, foundry3d_cmd, write_manifest

REPO = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_S = 600


def deploy_asset_flow(
    prefect_server, prefect_work_pool, folder: Path, config, name: str = "foundry3d-asset"
) -> str:
    """The asset shard flow deployed from this checkout, as ``name`` (one per test: the server
    is shared, and runs are counted per deployment), to a pool whose worker is online. Its
    flow runs read the database and store locations from their own environment (flows take no
    URLs as parameters), as a GPU worker would from its machine's settings."""
    pool, worker = prefect_work_pool
    name = deploy_flow(
        prefect_server,
        folder,
        source=REPO,
        entrypoint="flows/asset.py:asset_shard_flow",
        name=name,
        pool=pool,
        env={"FOUNDRY_DATABASE_URL": config.database_url, "FOUNDRY_STORE_URL": config.store_url,
             "FOUNDRY_LIBRARY_PATH": config.library_path},
    )
    prefect_server.wait_for_worker(pool, worker)
    return name


@pytest.mark.slow
@pytest.mark.postgres
def test_catalog_assets_run_on_the_worker_of_the_asset_deployment(
    prefect_server, new_postgres_database, tiny_library, prefect_work_pool, tmp_path,
):
    _, worker = prefect_work_pool
    config = PipelineConfig(
        database_url=new_postgres_database(migrated=True),
        store_url=(tmp_path / "objects").as_uri(),
        library_path=str(tiny_library),
    )
    asset_deployment = deploy_asset_flow(prefect_server, prefect_work_pool, tmp_path, config)
    manifest = write_manifest(tmp_path, [
        {"id": "can", "prompt": "a red soda can", "init": "library"},
        {"id": "crate", "prompt": "a wooden crate", "init": "library"},
    ])
    env = cli_env(
        config,
        tmp_path,
        FOUNDRY_PREFECT_MODE="server",
        FOUNDRY_ASSET_DEPLOYMENT=asset_deployment,
        PREFECT_API_URL=prefect_server.api_url,
    )
    cli = subprocess.Popen(
        foundry3d_cmd("run", str(manifest), "--shard-size", "2"), env=env, cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        output, _ = cli.communicate(timeout=CLI_TIMEOUT_S)
    finally:
        cli.kill()
    assert cli.returncode == 0, output
    assert "2 produced, 0 skipped (already done), 0 failed" in " ".join(output.split()), output

    # worker_name() is "host:pid": the stages of both assets (one shard) ran in one process that
    # was neither the CLI nor the worker itself: the flow-run process the worker started.
    host = socket.gethostname()
    elsewhere = {f"{host}:{cli.pid}", f"{host}:{worker.process.pid}"}
    store = open_store(config.store_url)
    with Session(engine_for(config.database_url)) as session:
        details = [queries.get_asset_detail(session, a) for a in session.scalars(select(Asset.id))]
    assert len(details) == 2
    stage_hosts = set()
    for detail in details:
        assert detail.asset.state == "succeeded", detail.asset.id
        assert store.exists(detail.asset.output_keys["asset.glb"]), detail.asset.id
        assert len(detail.stage_runs) == 7, detail.asset.id
        stage_hosts |= {run.host for run in detail.stage_runs}
    assert len(stage_hosts) == 1, f"the shard's stages ran in several processes: {stage_hosts}"
    assert not stage_hosts & elsewhere, f"the stages ran in {stage_hosts}, not in a flow run"

    with prefect_server.client() as client:
        deployment = client.read_deployment_by_name(asset_deployment)
        shard_runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC,  # sort and limit explicit: Prefect 3.8.8
            limit=50,  # sends null for them otherwise, which this FastAPI rejects (422)
        )
    assert [run.state.type.value for run in shard_runs] == ["COMPLETED"]
    assert set(shard_runs[0].parameters["asset_ids"]) == {d.asset.id for d in details}
