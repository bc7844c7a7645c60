"""``POST /v1/jobs`` in server mode (``FOUNDRY_PREFECT_MODE=server``): the API server hands each
asset to the asset deployment's work pool with ``run_deployment``, and a worker's flow-run
process produces it, against a real Prefect server, PostgreSQL database and process worker."""

from __future__ import annotations

import socket

import pytest
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.sorting import FlowRunSort
from sqlalchemy.orm import Session

from storage import queries
from tasks.config import PipelineConfig
from tasks.resources import engine_for
from tests.api.conftest import manifest_yaml, server_env, start_server, stop_server
from tests.flows.test_distributed import deploy_asset_flow


@pytest.mark.slow
@pytest.mark.postgres
def test_a_job_submitted_in_server_mode_runs_on_the_asset_deployments_worker(
    prefect_server, new_postgres_database, tiny_library, prefect_work_pool, tmp_path,
):
    _, worker = prefect_work_pool
    config = PipelineConfig(database_url=new_postgres_database(migrated=True),
                            store_url=(tmp_path / "objects").as_uri(),
                            library_path=str(tiny_library))
    deployment = deploy_asset_flow(
        prefect_server, prefect_work_pool, tmp_path, config, name="foundry3d-asset-api"
    )
    env = server_env(config.database_url, config.store_url, tiny_library, tmp_path)
    env.update(FOUNDRY_PREFECT_MODE="server", FOUNDRY_ASSET_DEPLOYMENT=deployment,
               PREFECT_API_URL=prefect_server.api_url)
    server = start_server(env, tmp_path)
    try:
        reply = server.request("POST", "/v1/jobs", manifest_yaml(
            [{"id": "crate", "prompt": "a wooden crate box", "init": "library"}]),
            content_type="application/x-yaml")
        assert reply.status == 202, reply.body
        batch_id = reply.json()["batch_id"]
        job = server.wait_job(batch_id)
        assert job["counts"]["succeeded"] == 1, (job, server.log())
        assert job["first_stage_s"] is not None and job["first_stage_s"] > 0
        asset_id = job["assets"][0]["asset_id"]
    finally:
        stop_server(server)

    # worker_name() is "host:pid": every stage ran in the flow-run process the worker started,
    # neither in the API server nor in the worker itself.
    host = socket.gethostname()
    with Session(engine_for(config.database_url)) as session:
        detail = queries.get_asset_detail(session, asset_id)
    stage_hosts = {run.host for run in detail.stage_runs}
    assert len(detail.stage_runs) == 7
    assert len(stage_hosts) == 1
    assert not stage_hosts & {f"{host}:{server.process.pid}", f"{host}:{worker.process.pid}"}

    with prefect_server.client() as client:
        found = client.read_deployment_by_name(deployment)
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[found.id])),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC,  # sort and limit explicit: Prefect 3.8.8
            limit=50,  # sends null for them otherwise, which this FastAPI rejects (422)
        )
    assert [run.state.type.value for run in runs] == ["COMPLETED"]
    assert runs[0].parameters["asset_ids"] == [asset_id]
    assert f"batch:{batch_id}" in runs[0].tags
