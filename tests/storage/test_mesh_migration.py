"""Migration 0007: input meshes on assets and the kind ``mesh``, without touching existing rows."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from alembic import command
from storage import db

ASSET = (
    "INSERT INTO assets (id, kind, seed, variant, generator, init, params, tags, "
    "previous_seeds, state, attempts, output_keys, created_at, updated_at) VALUES "
    "(:id, :kind, 0, 0, 'library', 'sphere', '{}', '[]', '[]', 'pending', 0, '{}', "
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


def test_upgrade_keeps_assets_and_their_stage_runs_and_accepts_mesh_assets(empty_db_url):
    config = db.alembic_config(empty_db_url)
    command.upgrade(config, "0005")
    _execute(empty_db_url, ASSET, id="a1", kind="prompt")
    _execute(empty_db_url, STAGE_RUN, id="a1")
    command.upgrade(config, "0007")
    assert _execute(empty_db_url, "SELECT count(*) FROM stage_runs")[0][0] == 1
    _execute(empty_db_url, ASSET, id="m1", kind="mesh")
    rows = _execute(empty_db_url, "SELECT id, kind, mesh_ref FROM assets ORDER BY id")
    assert [tuple(r) for r in rows] == [("a1", "prompt", None), ("m1", "mesh", None)]


def test_an_unknown_kind_is_still_refused_after_the_upgrade(empty_db_url):
    command.upgrade(db.alembic_config(empty_db_url), "0007")
    with pytest.raises(sa.exc.IntegrityError):
        _execute(empty_db_url, ASSET, id="x1", kind="video")


def test_downgrade_refuses_while_mesh_assets_exist_and_restores_the_old_check(empty_db_url):
    config = db.alembic_config(empty_db_url)
    command.upgrade(config, "0007")
    _execute(empty_db_url, ASSET, id="m1", kind="mesh")
    with pytest.raises(RuntimeError, match="mesh assets"):
        command.downgrade(config, "0005")
    _execute(empty_db_url, "DELETE FROM assets WHERE id = 'm1'")
    command.downgrade(config, "0005")
    with pytest.raises(sa.exc.IntegrityError):
        _execute(empty_db_url, ASSET, id="m2", kind="mesh")
