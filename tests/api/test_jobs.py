"""The job API against a real server: submit, follow, download, search, cancel, retry."""

from __future__ import annotations

import pytest

from tests.api.conftest import manifest_yaml

GLB_MAGIC = b"glTF"


def test_a_submitted_prompt_is_produced_and_its_glb_downloads(api_server, produced_asset):
    asset_id = produced_asset["asset_id"]
    job = produced_asset["job"]
    assert job["state"] == "finished"
    assert job["assets"][0]["progress"] == 100
    reply = api_server.request("GET", f"/v1/assets/{asset_id}/files/asset.glb", token="reader")
    assert reply.status == 200
    assert reply.body[:4] == GLB_MAGIC


def test_a_file_answers_a_byte_range(api_server, produced_asset):
    path = f"/v1/assets/{produced_asset['asset_id']}/files/asset.glb"
    reply = api_server.request("GET", path, token="reader", headers={"Range": "bytes=0-3"})
    assert reply.status == 206
    assert reply.body == GLB_MAGIC
    assert reply.headers["content-range"].startswith("bytes 0-3/")


def test_the_produced_asset_is_found_by_search(api_server, produced_asset):
    reply = api_server.request("GET", "/v1/assets?q=wooden%20crate&limit=5", token="reader")
    assert reply.status == 200
    assert produced_asset["asset_id"] in [item["asset_id"] for item in reply.json()["items"]]


def test_the_asset_record_lists_stages_metrics_and_files(api_server, produced_asset):
    asset = api_server.request("GET", f"/v1/assets/{produced_asset['asset_id']}").json()
    assert {run["stage"] for run in asset["stages"]} >= {"bundle", "refine", "publish"}
    assert asset["metrics"]
    assert {"asset.glb", "bundle.png"} <= {f["name"] for f in asset["files"]}


def test_listing_pages_on_with_the_cursor(api_server, produced_asset):
    first = api_server.request("GET", "/v1/assets?limit=1").json()
    assert len(first["items"]) == 1
    if first["next_cursor"]:
        second = api_server.request("GET", f"/v1/assets?limit=1&cursor={first['next_cursor']}")
        assert second.json()["items"][0]["asset_id"] != first["items"][0]["asset_id"]


def test_a_manifest_without_valid_rows_is_refused_with_line_numbers(api_server):
    body = b"items:\n  - prompt: ok but\n    seed: -4\n  - image: /etc/passwd\n"
    reply = api_server.request("POST", "/v1/jobs", body, content_type="application/x-yaml")
    assert reply.status == 422
    error = reply.json()["error"]
    assert error["code"] == "invalid_manifest"
    assert sorted(r["line"] for r in error["details"]["rejected"]) == [2, 4]


def test_a_single_request_object_is_a_job(api_server):
    reply = api_server.request("POST", "/v1/jobs", {
        "prompt": "a round rubber ball", "params": {"tile": 64}, "seed": 3})
    assert reply.status == 202
    assert len(reply.json()["assets"]) == 1
    api_server.request("POST", f"/v1/jobs/{reply.json()['batch_id']}/cancel")


def test_cancel_stops_the_queued_assets_and_retry_resumes_one(api_server):
    items = [{"prompt": f"a tall metal soda can number {n}", "seed": 100 + n} for n in range(3)]
    reply = api_server.request("POST", "/v1/jobs", manifest_yaml(items),
                               content_type="application/x-yaml")
    batch_id = reply.json()["batch_id"]
    cancel = api_server.request("POST", f"/v1/jobs/{batch_id}/cancel")
    assert cancel.status == 200
    job = api_server.wait_job(batch_id)
    assert job["state"] == "cancelled"
    cancelled = [a for a in job["assets"] if (a["error"] or {}).get("class") == "Cancelled"]
    assert len(cancelled) >= 2
    retried = cancelled[-1]["asset_id"]
    assert api_server.request("POST", f"/v1/assets/{retried}/retry").status == 202
    deadline_job = api_server.wait_job(batch_id)
    states = {a["asset_id"]: a["state"] for a in deadline_job["assets"]}
    assert states[retried] == "succeeded", api_server.log()


def test_an_unknown_job_is_a_json_404(api_server):
    reply = api_server.request("GET", "/v1/jobs/nope")
    assert reply.status == 404
    assert reply.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("token, status", [(None, 401), ("reader", 403), ("revoked", 401)])
def test_submitting_needs_an_active_write_token(api_server, token, status):
    reply = api_server.request("POST", "/v1/jobs", {"prompt": "a crate"}, token=token)
    assert reply.status == status
    assert set(reply.json()["error"]) == {"code", "message", "details"}


def test_a_read_token_may_search(api_server):
    assert api_server.request("GET", "/v1/assets", token="reader").status == 200


def test_an_uploaded_csv_manifest_lists_its_rejected_rows_by_line(api_server):
    import json
    import uuid

    from tests.flows.conftest import FAST_PARAMS

    params = json.dumps(FAST_PARAMS).replace('"', '""')
    csv = ("prompt,seed,params\n"
           f'a round rubber ball,5,"{params}"\n'
           "a broken row,not-a-number,\n").encode()
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"manifest\"; "
            f"filename=\"upload.csv\"\r\nContent-Type: text/csv\r\n\r\n").encode() + csv + \
        f"\r\n--{boundary}--\r\n".encode()
    reply = api_server.request("POST", "/v1/jobs", body,
                               content_type=f"multipart/form-data; boundary={boundary}")
    assert reply.status == 202, reply.body
    assert [r["line"] for r in reply.json()["rejected"]] == [3]
    api_server.request("POST", f"/v1/jobs/{reply.json()['batch_id']}/cancel")


def test_a_misspelt_retry_option_is_refused_naming_the_nearest_one(api_server):
    reply = api_server.request("POST", "/v1/assets/whatever/retry", {"resed": True})
    assert reply.status == 422
    assert "'reseed'" in reply.json()["error"]["message"]


def test_listing_without_a_token_is_refused_once_tokens_exist(api_server):
    assert api_server.request("GET", "/v1/assets", token=None).status == 401
