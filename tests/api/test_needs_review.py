"""The API shows an asset that needs review: its reasons, its state filter, its job's counts, and
it can be retried."""

from __future__ import annotations

from fastapi.testclient import TestClient

from foundry3d.api.app import create_app
from foundry3d.settings import ApiSettings, Settings
from storage import queries
from storage.db import session_scope
from storage.search import index_prompt

REVIEWED = "cd" * 32
DONE = "ef" * 32
REASONS = "needs review: mask_iou 0.41 < min 0.9"


def _app(tmp_path):
    """An API over one batch: an asset that needs review and one that succeeded."""
    app = create_app(Settings(data_dir=tmp_path), ApiSettings())
    app.state.embed = lambda _text: None  # keyword search only
    with session_scope(app.state.engine) as session:
        batch = queries.create_batch(session, manifest_path="m.yaml").id
        for asset_id, state, prompt in ((REVIEWED, "needs_review", "a green vase"),
                                        (DONE, "succeeded", "a green vase, done")):
            queries.insert_asset_if_new(session, asset_id=asset_id, kind="prompt",
                                        prompt=prompt, seed=1, generator="library",
                                        init="library")
            queries.claim_asset(session, asset_id, "w", 60)
            queries.release_asset(session, asset_id, "w", state,
                                  "review:QualityVerdict" if state == "needs_review" else None,
                                  REASONS if state == "needs_review" else None)
            index_prompt(session, asset_id, prompt, [])
        queries.add_batch_items(session, batch, [
            {"line": n, "item_id": None, "asset_id": a, "status": "accepted", "reference": None}
            for n, a in enumerate((REVIEWED, DONE), start=2)])
    app.state.batch_id = batch
    return app


def test_the_asset_json_carries_the_state_and_the_reasons(tmp_path):
    view = TestClient(_app(tmp_path)).get(f"/v1/assets/{REVIEWED}").json()
    assert view["state"] == "needs_review"
    assert view["error"] == {"class": "review:QualityVerdict", "message": REASONS}


def test_the_state_filter_lists_only_assets_that_need_review(tmp_path):
    client = TestClient(_app(tmp_path))
    for params in ({"state": "needs_review"}, {"state": "needs_review", "q": "green vase"}):
        page = client.get("/v1/assets", params=params).json()
        assert [card["asset_id"] for card in page["items"]] == [REVIEWED], params


def test_a_job_counts_needs_review_apart_and_ends_finished(tmp_path):
    app = _app(tmp_path)
    with session_scope(app.state.engine) as session:
        queries.finish_batch(session, app.state.batch_id, {})
    job = TestClient(app).get(f"/v1/jobs/{app.state.batch_id}").json()
    assert job["state"] == "finished"
    assert job["counts"] == {"pending": 0, "running": 0, "succeeded": 1, "failed": 0,
                             "needs_review": 1}
    progress = {row["asset_id"]: row["progress"] for row in job["assets"]}
    assert progress[REVIEWED] == 100
