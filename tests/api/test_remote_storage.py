"""The API on PostgreSQL + S3 (the suite's servers): submit, follow, ranged download, search."""

from __future__ import annotations

import pytest

from tests.api.conftest import manifest_yaml, server_env, start_server, stop_server


@pytest.mark.postgres
@pytest.mark.s3
def test_a_job_on_postgres_and_s3_produces_a_searchable_downloadable_asset(
    tmp_path, tiny_library, new_postgres_database, s3_server
):
    from storage.db import upgrade_database

    database_url = new_postgres_database()
    upgrade_database(database_url)
    if not s3_server.running:
        s3_server.start()
    env = server_env(database_url, s3_server.bucket_url(prefix=f"api-{tmp_path.name}"),
                     tiny_library, tmp_path)
    server = start_server(env, tmp_path)
    try:
        reply = server.request("POST", "/v1/jobs", manifest_yaml(
            [{"prompt": "a tall metal soda can", "seed": 7}]), content_type="application/x-yaml")
        assert reply.status == 202, reply.body
        job = server.wait_job(reply.json()["batch_id"])
        assert job["counts"]["succeeded"] == 1, server.log()
        asset_id = job["assets"][0]["asset_id"]
        whole = server.request("GET", f"/v1/assets/{asset_id}/files/asset.glb")
        part = server.request("GET", f"/v1/assets/{asset_id}/files/asset.glb",
                              headers={"Range": "bytes=-8"})
        assert part.status == 206
        assert part.body == whole.body[-8:]
        hits = server.request("GET", "/v1/assets?q=soda%20can").json()["items"]
        assert asset_id in [hit["asset_id"] for hit in hits]
    finally:
        stop_server(server)
