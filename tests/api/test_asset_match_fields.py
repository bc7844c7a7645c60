"""The API's asset JSON and search cards show the manifest file and a weak library match."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from foundry3d.api.app import create_app
from foundry3d.settings import ApiSettings, Settings
from storage import queries
from storage.db import session_scope
from storage.schema import Asset
from storage.search import index_prompt

ASSET = "ab" * 32


def _app(tmp_path):
    settings = Settings(data_dir=tmp_path)
    app = create_app(settings, ApiSettings())
    with session_scope(app.state.engine) as session:
        batch = queries.create_batch(session, manifest_path="m.yaml").id
        queries.insert_asset_if_new(session, asset_id=ASSET, kind="image", seed=1,
                                    generator="library", init="library")
        session.get(Asset, ASSET).state = "succeeded"
        queries.add_batch_items(session, batch, [{"line": 2, "item_id": "v", "asset_id": ASSET,
                                                  "status": "accepted",
                                                  "reference": "/photos/vase.png"}])
        queries.set_metrics(session, ASSET, {"library_similarity": 0.6,
                                             "library_match_weak": 1.0})
        key = f"assets/{ASSET}/match.json"
        app.state.store.put_bytes(key, json.dumps({"id": "vase-1", "licence": "CC0"}).encode())
        queries.merge_output_keys(session, ASSET, {"match.json": key})
        index_prompt(session, ASSET, "image request vase.png", [])
    return app


def test_the_asset_json_names_the_file_and_flags_the_weak_library_match(tmp_path):
    view = TestClient(_app(tmp_path)).get(f"/v1/assets/{ASSET}").json()
    assert view["request"]["references"] == ["/photos/vase.png"]
    assert view["library_match"]["weak"] is True
    assert view["library_match"]["id"] == "vase-1"
    assert view["library_match"]["licence"] == "CC0"


def test_search_cards_flag_the_weak_library_match(tmp_path):
    app = _app(tmp_path)
    app.state.embed = lambda _text: None  # keyword search only
    page = TestClient(app).get("/v1/assets", params={"q": "vase"}).json()
    [card] = page["items"]
    assert card["library_match_weak"] is True
    assert card["references"] == ["/photos/vase.png"]
