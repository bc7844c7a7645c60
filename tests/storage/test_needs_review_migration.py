"""Migration 0009: the asset state ``needs_review``, added and removed without losing rows."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from alembic import command
from storage import db

ASSET = (
    "INSERT INTO assets (id, kind, seed, variant, generator, init, params, tags, "
    "previous_seeds, state, attempts, output_keys, created_at, updated_at) VALUES "
    "(:id, 'prompt', 0, 0, 'library', 'sphere', '{}', '[]', '[]', :state, 0, '{}', "
    "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
)
STAGE_RUN = (
    "INSERT INTO stage_runs (asset_id, stage, attempt, status, started_at, output_keys) "
    "VALUES (:id, 'bundle', 1, 'succeeded', CURRENT_TIMESTAMP, '{}')"
)


def _execute(url: str, sql: str, **values) -> list[sa.Row]:
    """Run one statement in its own transaction; the rows of a SELECT, else []."""
    engine = db.make_engine(url)
    try:
        with engine.begin() as connection:
            result = connection.execute(sa.text(sql), values)
            return result.all() if result.returns_rows else []
    finally:
        engine.dispose()


def test_upgrade_keeps_assets_and_their_stage_runs_and_accepts_needs_review(empty_db_url):
    config = db.alembic_config(empty_db_url)
    command.upgrade(config, "0008")
    _execute(empty_db_url, ASSET, id="a1", state="succeeded")
    _execute(empty_db_url, STAGE_RUN, id="a1")
    command.upgrade(config, "0009")
    _execute(empty_db_url, ASSET, id="r1", state="needs_review")
    assert _execute(empty_db_url, "SELECT count(*) FROM stage_runs")[0][0] == 1
    rows = _execute(empty_db_url, "SELECT id, state FROM assets ORDER BY id")
    assert [tuple(r) for r in rows] == [("a1", "succeeded"), ("r1", "needs_review")]


def test_an_unknown_state_is_still_refused_after_the_upgrade(empty_db_url):
    command.upgrade(db.alembic_config(empty_db_url), "0009")
    with pytest.raises(sa.exc.IntegrityError):
        _execute(empty_db_url, ASSET, id="x1", state="reviewed")


def test_downgrade_turns_needs_review_into_failed_and_restores_the_old_check(empty_db_url):
    config = db.alembic_config(empty_db_url)
    command.upgrade(config, "0009")
    _execute(empty_db_url, ASSET, id="r1", state="needs_review")
    _execute(empty_db_url, STAGE_RUN, id="r1")
    command.downgrade(config, "0008")
    assert [tuple(r) for r in _execute(empty_db_url, "SELECT id, state FROM assets")] == [
        ("r1", "failed")]
    assert _execute(empty_db_url, "SELECT count(*) FROM stage_runs")[0][0] == 1
    with pytest.raises(sa.exc.IntegrityError):
        _execute(empty_db_url, ASSET, id="r2", state="needs_review")
