"""Finding, deleting and verifying assets at the storage level (SQLite/PostgreSQL, local/S3)."""

from __future__ import annotations

import pytest

from storage import integrity, queries
from storage import search as search_mod
from storage.db import make_engine, session_scope
from storage.schema import Asset

STAGE_ORDER = ("bundle", "init", "refine", "texture", "export", "evaluate", "publish")

#: The store holds stand-in bytes named like the artefacts (asset.glb, ...): bookkeeping is
#: under test here, not the files.
pytestmark = pytest.mark.placeholder_glbs


def _id(name: str) -> str:
    return (name.encode().hex() + "0" * 64)[:64]


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request, tmp_path):
    if request.param == "local":
        from storage.objects import LocalObjectStore

        return LocalObjectStore(tmp_path / "store")
    return request.getfixturevalue("s3_store")


@pytest.fixture
def engine(db_url):
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def _add(session, name: str, *, kind="prompt", prompt=None, state="succeeded", tags=(),
         reference=None, item_id=None, batch_id=None):
    asset_id = _id(name)
    queries.insert_asset_if_new(session, asset_id=asset_id, kind=kind, prompt=prompt, seed=1,
                                generator="library", init="library", tags=list(tags),
                                image_ref=f"inputs/{name}.png" if kind == "image" else None)
    session.get(Asset, asset_id).state = state
    if batch_id is not None:
        queries.add_batch_items(session, batch_id, [{
            "line": 1, "item_id": item_id, "asset_id": asset_id, "status": "accepted",
            "reference": reference}])
    session.flush()
    return asset_id


def _produce(session, store, asset_id: str, stages=("bundle", "export"), digests=True):
    """Succeeded runs of ``stages``, each writing one object, with digests recorded."""
    for stage in stages:
        artefact = {"bundle": "bundle.png", "export": "asset.glb"}.get(stage, f"{stage}.bin")
        key = f"assets/{asset_id}/{artefact}"
        data = f"{stage} of {asset_id}".encode()
        store.put_bytes(key, data)
        run = queries.record_stage_start(session, asset_id, stage, "h")
        queries.record_stage_success(session, run.id, {artefact: key})
        queries.merge_output_keys(session, asset_id, {artefact: key})
        if digests:
            queries.record_object_digests(session, asset_id, {key: integrity.bytes_digest(data)})


def test_manifest_id_finds_its_asset_per_batch(engine):
    with session_scope(engine) as session:
        first = queries.create_batch(session, manifest_path="a.yaml").id
        second = queries.create_batch(session, manifest_path="b.yaml").id
        mug = _add(session, "mug", prompt="a mug", item_id="mug", batch_id=first)
        other = _add(session, "mug2", prompt="a mug, red", item_id="mug", batch_id=second)
        assert {i.asset_id for i in queries.find_manifest_items(session, "mug")} == {mug, other}
        assert [i.asset_id for i in queries.find_manifest_items(session, "mug", first)] == [mug]


def test_promptless_requests_are_searchable_by_file_name_and_tags(engine):
    with session_scope(engine) as session:
        batch = queries.create_batch(session, manifest_path="m.yaml").id
        photo = _add(session, "chair", kind="image", tags=["furniture"], batch_id=batch,
                     reference="/data/photos/oak_chair.jpg", item_id="c1")
        text = search_mod.asset_search_text(session, photo, caption="a wooden chair")
        search_mod.index_prompt(session, photo, text, ["furniture"])
        for query in ("oak_chair.jpg", "oak", "furniture"):
            hits = search_mod.keyword_search(session, query)
            assert [h.asset_id for h in hits] == [photo], query


def test_failed_assets_are_found_by_keyword_in_the_assets_table(engine):
    with session_scope(engine) as session:
        failed = _add(session, "kettle", prompt="a copper kettle", state="failed")
        _add(session, "lamp", prompt="a copper lamp", state="succeeded")
        hits = search_mod.search_assets_table(session, "kettle copper", state="failed")
        assert [h.asset_id for h in hits] == [failed]
        assert hits[0].score == 1.0


def test_search_details_carry_references_and_the_weak_match_flag(engine):
    with session_scope(engine) as session:
        batch = queries.create_batch(session, manifest_path="m.yaml").id
        weak = _add(session, "w", kind="image", batch_id=batch, reference="/x/vase.png")
        queries.set_metrics(session, weak, {"library_match_weak": 1.0})
        hit = search_mod.SearchHit(weak, 0.5, None, None, "image request", "succeeded")
        [detailed] = search_mod.with_details(session, [hit])
        assert detailed.references == ["/x/vase.png"]
        assert detailed.library_match_weak is True


def test_deleting_removes_objects_and_rows_and_is_idempotent(engine, store):
    with session_scope(engine) as session:
        doomed = _add(session, "doomed", prompt="a chipped plate")
        kept = _add(session, "kept", prompt="a whole plate")
        _produce(session, store, doomed)
        _produce(session, store, kept)
        search_mod.index_prompt(session, doomed, "a chipped plate")
        assert integrity.delete_assets(session, store, [doomed]) == {doomed: 2}
    with session_scope(engine) as session:
        assert queries.get_asset(session, doomed) is None
        assert queries.stage_runs(session, doomed) == []
        assert search_mod.keyword_search(session, "chipped") == []
        assert store.list(f"assets/{doomed}/") == []
        assert len(store.list(f"assets/{kept}/")) == 2
        assert integrity.delete_assets(session, store, [doomed]) == {}


def test_verify_finds_missing_and_corrupt_objects(engine, store):
    with session_scope(engine) as session:
        asset_id = _add(session, "v", prompt="a vase")
        _produce(session, store, asset_id)
        asset = queries.get_asset(session, asset_id)
        assert integrity.check_asset(session, store, asset) == []
        store.delete(f"assets/{asset_id}/asset.glb")
        store.put_bytes(f"assets/{asset_id}/bundle.png", b"bundle of someone else!")
        problems = {p.key.rsplit("/", 1)[-1]: p.problem
                    for p in integrity.check_asset(session, store, asset)}
        assert problems == {"asset.glb": "missing", "bundle.png": "size"}


def test_verify_detects_same_size_corruption_by_checksum(engine, store):
    with session_scope(engine) as session:
        asset_id = _add(session, "c", prompt="a cup")
        _produce(session, store, asset_id, stages=("bundle",))
        key = f"assets/{asset_id}/bundle.png"
        data = store.get_bytes(key)
        store.put_bytes(key, bytes([data[0] ^ 1]) + data[1:])
        [problem] = integrity.check_asset(session, store, queries.get_asset(session, asset_id))
        assert problem.problem == "checksum"


def test_objects_without_a_recorded_digest_are_checked_for_existence_and_size(engine, store):
    with session_scope(engine) as session:
        asset_id = _add(session, "old", prompt="an old bowl")
        _produce(session, store, asset_id, digests=False)
        asset = queries.get_asset(session, asset_id)
        store.put_bytes(f"assets/{asset_id}/bundle.png", b"changed but not empty")
        assert integrity.check_asset(session, store, asset) == []
        store.put_bytes(f"assets/{asset_id}/bundle.png", b"")
        assert [p.problem for p in integrity.check_asset(session, store, asset)] == ["size"]


def test_repair_undoes_the_stage_that_lost_its_output_and_every_later_one(engine, store):
    with session_scope(engine) as session:
        asset_id = _add(session, "r", prompt="a rope")
        _produce(session, store, asset_id, stages=("bundle", "refine", "export"))
        search_mod.index_prompt(session, asset_id, "a rope")
        store.delete(f"assets/{asset_id}/refine.bin")
        asset = queries.get_asset(session, asset_id)
        problems = integrity.check_asset(session, store, asset)
        undone = integrity.repair_asset(session, asset, problems, STAGE_ORDER)
        assert undone == ["refine", "texture", "export", "evaluate", "publish"]
    with session_scope(engine) as session:
        asset = queries.get_asset(session, asset_id)
        assert (asset.state, asset.current_stage) == ("failed", "refine")
        assert asset.last_error_class == integrity.MISSING_OBJECT
        assert queries.completed_stage(session, asset_id, "bundle", "h") is not None
        assert queries.completed_stage(session, asset_id, "export", "h") is None
        assert search_mod.keyword_search(session, "rope") == []
