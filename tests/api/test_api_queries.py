"""The query functions the API added to storage/queries.py, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from storage import queries
from storage.db import make_engine, session_scope


@pytest.fixture
def engine(db_url):
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def _assets(session, n: int) -> list[str]:
    ids = []
    for i in range(n):
        asset, _ = queries.insert_asset_if_new(
            session, asset_id=f"asset{i:02d}", kind="prompt", prompt=f"thing {i}", seed=i,
            generator="library", init="sphere", tags=["even"] if i % 2 == 0 else ["odd", "x"])
        ids.append(asset.id)
    return ids


def test_a_revoked_token_still_counts_as_created_but_not_active(engine):
    with session_scope(engine) as session:
        queries.create_api_token(session, name="a", scope="read", token_sha256="1" * 64)
        queries.create_api_token(session, name="b", scope="write", token_sha256="2" * 64)
        assert queries.revoke_api_token(session, "a") is True
        assert queries.revoke_api_token(session, "a") is False
        assert queries.api_token_counts(session) == (2, 1)
        assert queries.find_api_token(session, "2" * 64).name == "b"


def test_a_token_name_is_taken_once(engine):
    with session_scope(engine) as session:
        queries.create_api_token(session, name="a", scope="read", token_sha256="1" * 64)
        with pytest.raises(ValueError, match="already exists"):
            queries.create_api_token(session, name="a", scope="read", token_sha256="3" * 64)


def test_pages_follow_the_cursor_without_repeats_and_filter_by_tag(engine):
    with session_scope(engine) as session:
        ids = _assets(session, 7)
    seen: list[str] = []
    after = None
    with session_scope(engine) as session:
        while True:
            page = queries.page_assets(session, after=after, limit=3)
            if not page:
                break
            seen += [a.id for a in page]
            after = (page[-1].created_at, page[-1].id)
        odd = queries.page_assets(session, tag="odd", limit=10)
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))
    assert sorted(a.id for a in odd) == [i for n, i in enumerate(ids) if n % 2]


def test_cancel_fails_pending_and_running_assets_only(engine):
    with session_scope(engine) as session:
        pending, running, done = _assets(session, 3)
        assert queries.claim_asset(session, running, "worker", 60)
        assert queries.claim_asset(session, done, "worker", 60)
        queries.release_asset(session, done, "worker", "succeeded")
        changed = queries.cancel_assets(session, [pending, running, done], "stop")
        assert sorted(changed) == sorted([pending, running])
        assert queries.get_asset(session, running).last_error_class == "Cancelled"
        # The worker that held the running asset has lost its lease.
        assert not queries.renew_lease(session, running, "worker", 60)
        assert queries.get_asset(session, done).state == "succeeded"


def test_stage_runs_of_many_assets_come_in_one_mapping(engine):
    with session_scope(engine) as session:
        first, second, idle = _assets(session, 3)
        for asset_id, stages in ((first, ("bundle", "init")), (second, ("bundle",))):
            for stage in stages:
                queries.record_stage_start(session, asset_id, stage, params_hash=None)
        runs = queries.stage_runs_of(session, [first, second, idle])
    assert [r.stage for r in runs[first]] == ["bundle", "init"]
    assert [r.stage for r in runs[second]] == ["bundle"]
    assert runs[idle] == []
