"""The commands that find and look after assets: `show`, `search`, `assets`, `verify`."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from foundry3d.cli import app
from foundry3d.cli.app import UserError, console
from foundry3d.settings import get_api_settings, get_settings
from storage import integrity, queries
from storage.db import make_engine, session_scope
from storage.objects import open_store
from storage.schema import Asset
from storage.search import MIN_HYBRID_SCORE, index_prompt

runner = CliRunner()

#: The store holds stand-in bytes named like the artefacts (asset.glb, ...): bookkeeping is
#: under test here, not the files.
pytestmark = pytest.mark.placeholder_glbs


def _id(name: str) -> str:
    return (name.encode().hex() + "0" * 64)[:64]


def _flat(output: str) -> str:
    return re.sub(r"[\s│┃]", "", output)


@pytest.fixture
def factory(tmp_path, monkeypatch):
    """An embedded database and local store with a few assets, as the CLI sees them."""
    monkeypatch.setenv("FOUNDRY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FOUNDRY_API_URL", "http://127.0.0.1:9")  # no server: search locally
    monkeypatch.delenv("FOUNDRY_DATABASE_URL", raising=False)
    monkeypatch.delenv("FOUNDRY_STORE_URL", raising=False)
    monkeypatch.setattr(console, "_width", 400)  # ids and file names on one line each
    get_settings.cache_clear()
    get_api_settings.cache_clear()
    settings = get_settings()
    runner.invoke(app, ["db", "upgrade"])
    engine = make_engine(settings.resolved_database_url)
    store = open_store(settings.resolved_store_url)

    def add(name, *, prompt=None, kind="prompt", state="succeeded", reference=None,
            item_id=None, batch=None, glb=True, metrics=None, match=None):
        asset_id = _id(name)
        with session_scope(engine) as session:
            queries.insert_asset_if_new(session, asset_id=asset_id, kind=kind, prompt=prompt,
                                        seed=1, generator="library", init="library")
            session.get(Asset, asset_id).state = state
            if batch:
                queries.add_batch_items(session, batch, [{
                    "line": 3, "item_id": item_id, "asset_id": asset_id,
                    "status": "accepted", "reference": reference}])
            if glb:
                key = f"assets/{asset_id}/asset.glb"
                store.put_bytes(key, b"glTF" + name.encode())
                run = queries.record_stage_start(session, asset_id, "export", "h")
                queries.record_stage_success(session, run.id, {"asset.glb": key})
                queries.merge_output_keys(session, asset_id, {"asset.glb": key})
                queries.record_object_digests(
                    session, asset_id, {key: integrity.bytes_digest(b"glTF" + name.encode())})
            if match:
                key = f"assets/{asset_id}/match.json"
                store.put_bytes(key, json.dumps(match).encode())
                queries.merge_output_keys(session, asset_id, {"match.json": key})
            if metrics:
                queries.set_metrics(session, asset_id, metrics)
            if state == "succeeded":
                from models.embed.numpy_text import get_numpy_text_embedder
                from storage.search import asset_search_text

                text = asset_search_text(session, asset_id)
                embedding = get_numpy_text_embedder().embed_texts([text])[0]
                index_prompt(session, asset_id, text, [], embedding)
        return asset_id

    def batch() -> str:
        with session_scope(engine) as session:
            return queries.create_batch(session, manifest_path="m.yaml").id

    yield add, batch, store, engine
    engine.dispose()
    get_settings.cache_clear()
    get_api_settings.cache_clear()


def test_show_accepts_the_manifest_id(factory):
    add, batch, *_ = factory
    asset_id = add("mug", prompt="a red mug", item_id="mug-1", batch=batch())
    result = runner.invoke(app, ["show", "mug-1"])
    assert result.exit_code == 0, result.output
    assert asset_id in _flat(result.output)


def test_show_of_an_ambiguous_manifest_id_lists_the_candidates_and_batch_picks_one(factory):
    add, batch, *_ = factory
    first, second = batch(), batch()
    one = add("mug", prompt="a red mug", item_id="mug-1", batch=first)
    two = add("mug2", prompt="a blue mug", item_id="mug-1", batch=second)
    result = runner.invoke(app, ["show", "mug-1"])
    assert isinstance(result.exception, UserError)
    message = str(result.exception)
    assert one[:12] in message and two[:12] in message and first[:12] in message
    assert "--batch" in message
    picked = runner.invoke(app, ["show", "mug-1", "--batch", second])
    assert picked.exit_code == 0, picked.output
    assert two in _flat(picked.output)


def test_show_names_the_original_file_and_flags_a_weak_library_match(factory):
    add, batch, *_ = factory
    add("photo", kind="image", reference="/home/me/photos/teapot_side.jpg", item_id="t",
        batch=batch(), metrics={"library_similarity": 0.6, "library_match_weak": 1.0},
        match={"id": "ycb-teapot", "caption": "a white teapot", "licence": "CC BY 4.0",
               "similarity": 0.6, "weak": True})
    result = runner.invoke(app, ["show", "t"])
    assert result.exit_code == 0, result.output
    flat = _flat(result.output)
    for expected in ("teapot_side.jpg", "ycb-teapot", "CCBY4.0", "WEAKMATCH"):
        assert expected in flat


def test_search_by_file_name_shows_the_file(factory):
    add, batch, *_ = factory
    asset_id = add("photo", kind="image", reference="/data/oak_chair.jpg", batch=batch())
    result = runner.invoke(app, ["search", "oak_chair"])
    assert result.exit_code == 0, result.output
    assert asset_id in _flat(result.output) and "oak_chair.jpg" in _flat(result.output)


def test_search_with_state_failed_finds_failed_assets(factory):
    add, *_ = factory
    failed = add("kettle", prompt="a copper kettle", state="failed", glb=False)
    result = runner.invoke(app, ["search", "kettle", "--state", "failed"])
    assert result.exit_code == 0, result.output
    assert failed in _flat(result.output)


def test_search_with_an_unknown_state_is_a_user_error(factory):
    result = runner.invoke(app, ["search", "kettle", "--state", "broken"])
    assert isinstance(result.exception, UserError)
    assert "succeeded" in str(result.exception)


def test_search_without_a_good_match_says_so_and_all_shows_weak_hits(factory):
    add, *_ = factory
    add("mug", prompt="a red ceramic coffee mug")
    add("chair", prompt="a wooden kitchen chair")
    result = runner.invoke(app, ["search", "spaceship engine"])
    assert result.exit_code == 0, result.output
    flat = _flat(result.output)
    assert "Noassetmatches'spaceshipengine'well" in flat
    best = float(re.search(r"(\d\.\d\d)\);--all", flat).group(1))
    assert best < MIN_HYBRID_SCORE
    shown = runner.invoke(app, ["search", "spaceship engine", "--all"])
    assert _id("mug") in _flat(shown.output) or _id("chair") in _flat(shown.output)


def test_search_flags_a_weak_library_match(factory):
    add, *_ = factory
    add("vase", prompt="a tall blue vase", metrics={"library_match_weak": 1.0})
    result = runner.invoke(app, ["search", "vase"])
    assert result.exit_code == 0, result.output
    assert "weaklibrarymatch" in _flat(result.output)


def test_assets_delete_removes_objects_and_rows_twice_without_error(factory):
    add, _, store, engine = factory
    asset_id = add("plate", prompt="a plate")
    for _ in range(2):
        result = runner.invoke(app, ["assets", "delete", asset_id, "--yes"])
        assert result.exit_code == 0, result.output
    assert store.list(f"assets/{asset_id}/") == []
    with session_scope(engine) as session:
        assert queries.get_asset(session, asset_id) is None


def test_assets_delete_asks_before_deleting(factory):
    add, _, store, _ = factory
    asset_id = add("plate", prompt="a plate")
    result = runner.invoke(app, ["assets", "delete", asset_id], input="n\n")
    assert "Nothingdeleted" in _flat(result.output)
    assert store.list(f"assets/{asset_id}/") != []


def test_assets_purge_deletes_only_the_chosen_state(factory):
    add, _, store, engine = factory
    failed = add("bad", prompt="a bad one", state="failed")
    good = add("good", prompt="a good one")
    result = runner.invoke(app, ["assets", "purge", "--state", "failed", "--yes"])
    assert result.exit_code == 0, result.output
    with session_scope(engine) as session:
        assert queries.get_asset(session, failed) is None
        assert queries.get_asset(session, good) is not None
    assert store.list(f"assets/{failed}/") == []


def test_assets_purge_rejects_an_unknown_state(factory):
    result = runner.invoke(app, ["assets", "purge", "--state", "broken", "--yes"])
    assert isinstance(result.exception, UserError)


def test_verify_reports_a_missing_glb_and_removes_the_asset_from_search(factory):
    add, _, store, _ = factory
    asset_id = add("lamp", prompt="a brass lamp")
    assert runner.invoke(app, ["verify"]).exit_code == 0
    store.delete(f"assets/{asset_id}/asset.glb")
    result = runner.invoke(app, ["verify"])
    assert result.exit_code == 1
    assert "missing" in result.output and asset_id[:12] in result.output
    assert asset_id not in _flat(runner.invoke(app, ["search", "brass lamp", "--all"]).output)


def test_verify_repair_marks_the_asset_failed_for_retry(factory):
    add, _, store, engine = factory
    asset_id = add("lamp", prompt="a brass lamp")
    store.delete(f"assets/{asset_id}/asset.glb")
    result = runner.invoke(app, ["verify", "--repair"])
    assert result.exit_code == 1, result.output
    with session_scope(engine) as session:
        asset = queries.get_asset(session, asset_id)
        assert asset.state == "failed"
        assert asset.last_error_class == integrity.MISSING_OBJECT
        assert asset.current_stage == "export"
