"""Migration 0010: PostgreSQL's prompt-index version counter, advanced by each write to the
index, and removed whole by the downgrade; SQLite gets nothing (it has PRAGMA data_version)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from alembic import command
from storage import db

ASSET = (
    "INSERT INTO assets (id, kind, seed, variant, generator, init, params, tags, "
    "previous_seeds, state, attempts, output_keys, created_at, updated_at) VALUES "
    "('a1', 'prompt', 0, 0, 'library', 'sphere', '{}', '[]', '[]', 'succeeded', 0, '{}', "
    "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
)
ENTRY = (
    "INSERT INTO prompt_index (asset_id, text, tags, updated_at) "
    "VALUES ('a1', 'a red chair', '[]', CURRENT_TIMESTAMP)"
)
OBJECTS = (
    "SELECT to_regclass('prompt_index_version'), to_regclass('prompt_index_version_seq'), "
    "(SELECT count(*) FROM pg_trigger WHERE tgname = 'prompt_index_version_bump'), "
    "(SELECT count(*) FROM pg_proc WHERE proname = 'prompt_index_bump_version')"
)
VERSION = "SELECT version FROM prompt_index_version WHERE id = 1"


def _execute(url: str, *statements: str) -> list[sa.Row]:
    """Run statements in one transaction; the rows of the last one, else []."""
    engine = db.make_engine(url)
    try:
        with engine.begin() as connection:
            for sql in statements:
                result = connection.execute(sa.text(sql))
            return result.all() if result.returns_rows else []
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_upgrade_adds_a_counter_that_each_write_to_the_index_advances(new_postgres_database):
    url = new_postgres_database()
    command.upgrade(db.alembic_config(url), "0010")
    (first,) = _execute(url, VERSION)[0]
    (second,) = _execute(url, ASSET, ENTRY, VERSION)[0]
    (third,) = _execute(url, "UPDATE prompt_index SET text = 'a chair'", VERSION)[0]
    assert first < second < third


@pytest.mark.postgres
def test_downgrade_removes_the_counter_its_trigger_function_and_sequence(new_postgres_database):
    url = new_postgres_database()
    config = db.alembic_config(url)
    command.upgrade(config, "0010")
    command.downgrade(config, "0009")
    assert tuple(_execute(url, OBJECTS)[0]) == (None, None, 0, 0)
    _execute(url, ASSET, ENTRY)  # writes no longer look for the counter
    assert _execute(url, "SELECT count(*) FROM prompt_index")[0][0] == 1


def test_sqlite_gets_no_counter(tmp_path):
    url = f"sqlite:///{tmp_path / 'app.db'}"
    command.upgrade(db.alembic_config(url), "0010")
    tables = _execute(url, "SELECT name FROM sqlite_master WHERE name LIKE 'prompt_index_ver%'")
    assert tables == []
