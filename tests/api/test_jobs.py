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


# --- mesh requests: input meshes uploaded beside the manifest, or named by a confined path ---

MESH_TINY = {"tile": 64, "steps": 4, "max_sequence_length": 160, "dtype": "float32",
             "check_degenerate": False}
"""Tiny Flux settings of ``tests/flows/test_mesh_requests.py``: 64-px tiles, few steps."""


def _multipart(fields: list[tuple[str, str | None, bytes]]) -> tuple[bytes, str]:
    """(body, content type) of a multipart form: ``(field, file name or None, bytes)``."""
    import uuid

    boundary = uuid.uuid4().hex
    body = b""
    for name, filename, data in fields:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += (f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
                 "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="module")
def box_glb(tmp_path_factory) -> bytes:
    from tests.models.kiss3dgen_fixtures import write_coloured_box

    return write_coloured_box(tmp_path_factory.mktemp("mesh-input") / "box.glb").read_bytes()


@pytest.fixture(scope="module")
def tiny_mesh_weights(tmp_path_factory) -> dict[str, str]:
    from models.generate.kiss3dgen.tiny import save_tiny_controlnet, save_tiny_flux

    root = tmp_path_factory.mktemp("api-weights")
    return {"flux_path": str(save_tiny_flux(root / "flux", seed=0)),
            "controlnet_path": str(save_tiny_controlnet(root / "controlnet", seed=0))}


def test_a_manifest_with_an_uploaded_mesh_is_produced_keeping_its_geometry(
        api_server, box_glb, tiny_mesh_weights):
    import yaml

    from tests.flows.conftest import FAST_PARAMS, NO_VERDICT

    kept = {k: v for k, v in FAST_PARAMS.items() if not k.startswith("refine_")}  # no refining
    # Random Flux weights draw a bundle the kept box cannot match: no quality verdict here.
    manifest = yaml.safe_dump({"items": [{
        "id": "box", "mesh": "box.glb", "prompt": "a box in red lacquer",
        "params": {**kept, **MESH_TINY, **tiny_mesh_weights, **NO_VERDICT,
                   "mode": "retexture"}}]}).encode()
    body, content_type = _multipart([("manifest", "rows.yaml", manifest),
                                     ("files", "box.glb", box_glb)])
    reply = api_server.request("POST", "/v1/jobs", body, content_type=content_type)
    assert reply.status == 202, reply.body
    job = api_server.wait_job(reply.json()["batch_id"])
    assert job["counts"]["succeeded"] == 1, (job, api_server.log())
    asset = api_server.request("GET", f"/v1/assets/{job['assets'][0]['asset_id']}").json()
    import hashlib

    digest = hashlib.sha256(box_glb).hexdigest()
    assert (asset["request"]["kind"], asset["request"]["mesh_ref"]) == (
        "mesh", f"inputs/{digest}.glb")
    sidecar = api_server.request("GET", f"/v1/assets/{asset['asset_id']}/files/bundle.json")
    assert sidecar.status == 200, [f["name"] for f in asset["files"]]
    assert sidecar.json()["keep_geometry"] is True
    assert {"asset.glb", "bundle.png"} <= {f["name"] for f in asset["files"]}


def test_a_single_mesh_request_in_a_form_uses_its_uploaded_mesh(api_server, box_glb):
    import json

    request = {"mesh": "box.glb", "prompt": "a blue box", "params": {"mode": "edit"}}
    body, content_type = _multipart([("request", None, json.dumps(request).encode()),
                                     ("files", "box.glb", box_glb)])
    reply = api_server.request("POST", "/v1/jobs", body, content_type=content_type)
    assert reply.status == 202, reply.body
    assert len(reply.json()["assets"]) == 1
    api_server.request("POST", f"/v1/jobs/{reply.json()['batch_id']}/cancel")


def test_a_json_mesh_request_naming_a_file_not_uploaded_is_refused(api_server):
    reply = api_server.request("POST", "/v1/jobs", {"mesh": "box.glb", "prompt": "a blue box"})
    assert reply.status == 422
    [rejected] = reply.json()["error"]["details"]["rejected"]
    assert "box.glb" in rejected["reason"]


def test_a_mesh_path_outside_the_upload_and_image_roots_is_refused(api_server, tmp_path,
                                                                     box_glb):
    outside = tmp_path / "outside.glb"
    outside.write_bytes(box_glb)
    reply = api_server.request("POST", "/v1/jobs", {"mesh": str(outside), "prompt": "a box"})
    assert reply.status == 422
    [rejected] = reply.json()["error"]["details"]["rejected"]
    assert "outside.glb" in rejected["reason"]


@pytest.mark.parametrize("filename", ["../box.glb", ".hidden.glb", "box.exe", "manifest.yaml"])
def test_an_input_upload_with_a_bad_name_is_refused(api_server, box_glb, filename):
    manifest = manifest_yaml([{"mesh": "box.glb", "prompt": "a blue box"}])
    body, content_type = _multipart([("manifest", "rows.yaml", manifest),
                                     ("files", filename, box_glb)])
    reply = api_server.request("POST", "/v1/jobs", body, content_type=content_type)
    assert reply.status == 422
    assert reply.json()["error"]["code"] == "invalid_upload"
